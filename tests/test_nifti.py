"""Input sanity from the NIfTI header, before any voxel is read: the voxel budget, files shorter than
their header promises (plain and gzip, multi-member gzip included), and affines that describe no grid."""
import gzip
import io
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from mri2ct.data.nifti import MAX_VOXELS, load_volume
from mri2ct.data.orientation import to_ras


def nifti_bytes(shape, affine=None):
    """The bytes of an uncompressed NIfTI-1 file of random float32 data."""
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine)
    return image.to_bytes()


def test_header_promising_more_voxels_than_the_budget_is_refused_unread(tmp_path):
    raw = bytearray(nifti_bytes((2, 2, 2)))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    header.set_data_shape((1000, 1000, 1000))
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + bytes(raw[348:]))        # a tiny file claiming 1000^3 voxels
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"huge.nii: header describes 1000 x 1000 x 1000 voxels, more than "
                                         rf"the limit of {MAX_VOXELS:,}"):
        load_volume(str(path), "MR")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2 ** 20


@pytest.mark.parametrize("compressed", [False, True])
def test_file_shorter_than_its_header_is_refused_before_reading(tmp_path, compressed):
    raw = nifti_bytes((160, 160, 160))[:5000]                      # header promises 16 MB, holds 5 kB
    path = tmp_path / ("cut.nii.gz" if compressed else "cut.nii")
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    tracemalloc.start()
    with pytest.raises(ValueError, match="cut.nii(.gz)?: file is truncated, the header promises 16,384,352 "
                                         "bytes of image data and the file holds 5,000"):
        load_volume(str(path), "MR")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2 ** 20                                     # the 16 MB array was never allocated


def test_multi_member_gzip_is_read(tmp_path):
    """gzip's size field covers only the last member: a file of two members is whole all the same."""
    raw = nifti_bytes((20, 24, 28))
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:len(raw) - 100]) + gzip.compress(raw[len(raw) - 100:]))
    data, _ = load_volume(str(path))
    assert data.shape == (20, 24, 28)


@pytest.mark.parametrize("linear, words", [
    (np.diag([2.0, 0.0, 2.0]), "voxel sizes 2 x 0 x 2 mm"),
    (np.array([[1.0, 1, 0], [0, 0, 0], [0, 0, 1]]), "voxel sizes 1 x 1 x 1 mm and determinant 0"),  # two axes parallel
    (np.diag([2.0, np.nan, 2.0]), "voxel sizes 2 x nan x 2 mm"),
])
def test_degenerate_affine_is_one_line_not_an_index_error(linear, words):
    affine = np.eye(4)
    affine[:3, :3] = linear
    with pytest.raises(ValueError, match=f"scan.nii: degenerate affine, {words}"):
        to_ras(np.zeros((3, 4, 5)), affine, "scan.nii")

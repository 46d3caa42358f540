"""python -m nn3d.kernels.check: one kernel of every family passes in both dtypes at every tile width,
a perturbed kernel fails its own rows (exit 1), a crash is a failed row, a bad name is one line
(exit 2). The test files of the kernels compile the same signatures, so in a full run this test
adds no compilation; the whole command is left to the command line (every kernel, ~15 s warm)."""
import subprocess
import sys

import numpy as np
import pytest

from nn3d.kernels import check, conv3d, conv3d_grad_weight, padding, relu

# one kernel per family, the cheapest to compile where a family has several
SUBSET = ["conv3d_grad_weight", "winograd_forward", "flipped_transposed_transform",
          "conv_transpose3d_blocks_grad_input", "pointwise_grad_weight", "batchnorm_backward_input",
          "relu_backward", "maxpool3d_forward", "channel_sums", "pad_channels_last"]


def table_rows(output):
    """The rows of the table: kernel (with ': output' for a kernel of several), case, dtype, width,
    the two errors, tolerance and result."""
    names = {check.row_name(kernel.name, out) for kernel in check.KERNELS.values() for out in kernel.outputs}
    rows = []
    for line in output.splitlines():
        name = next((n for n in sorted(names, key=len, reverse=True) if line.startswith(n + " ")), None)
        if name is not None:
            fields = line[len(name):].split()
            rows.append((name, " ".join(fields[:-6]), *fields[-6:]))
    return rows


def test_the_subset_covers_every_family():
    assert {check.KERNELS[name].family for name in SUBSET} == {k.family for k in check.KERNELS.values()}


def test_one_kernel_of_each_family_passes(capsys):
    assert check.main(SUBSET) == 0
    output = capsys.readouterr().out
    assert "kernel" in output and "max abs err" in output and "max rel err" in output and "tolerance" in output
    rows = table_rows(output)
    for name in SUBSET:
        kernel = check.KERNELS[name]
        expected = {(check.row_name(name, out), case.label, np.dtype(dtype).name, str(width or "-"))
                    for _, case, dtype, width in check.rows_of(kernel) for out in kernel.outputs}
        assert {row[:4] for row in rows if row[0].split(":")[0] == name} == expected, name
    widths = {*check.tile_widths(), *check.PRODUCT_WIDTHS}                               # 8, 6 and 4 on any CPU
    assert {row[3] for row in rows} == {"-", *map(str, widths)}
    assert {row[2] for row in rows} == {"float32", "float64"}
    assert all(row[-1] == "pass" and float(row[5]) <= float(row[6]) for row in rows)
    assert output.rstrip().endswith(f"all {len(rows)} checks pass")


def test_a_perturbed_kernel_fails_its_rows(monkeypatch, capsys):
    """One output value off by 1e-3 of the output's scale (an error in a tile's tail): every
    conv3d_forward row fails, in float32 too; the other kernel's rows still pass."""
    correct = conv3d.conv3d_forward

    def perturbed(*args, **kwargs):
        y = correct(*args, **kwargs).copy()
        y.reshape(-1)[-1] += 1e-3 * np.abs(y).max()
        return y

    monkeypatch.setattr(conv3d, "conv3d_forward", perturbed)
    assert check.main(["conv3d_forward", "relu_forward"]) == 1
    output = capsys.readouterr().out
    rows = table_rows(output)
    assert {row[-1] for row in rows if row[0] == "conv3d_forward"} == {"FAIL"}
    assert {row[-1] for row in rows if row[0] == "relu_forward"} == {"pass"}
    assert len([row for row in rows if row[0] == "conv3d_forward"]) == len(check.rows_of(check.KERNELS["conv3d_forward"]))
    assert output.rstrip().endswith("KERNEL CHECK FAILED: conv3d_forward")


def off_in_the_last_element(function):
    """`function`, its result's last element off by 1e-3 of the result's scale (a tail error)."""
    def perturbed(*args, **kwargs):
        y = np.array(function(*args, **kwargs))
        y.reshape(-1)[-1] += 1e-3 * np.abs(y).max()
        return y
    return perturbed


def shifted_along_w(pad_kernel):
    """A wrong `pad_kernel`: every row lands one voxel further along W than it should."""
    def shifted(x_cl, offset_d, offset_h, offset_w, channel_start, out):
        pad_kernel(x_cl, offset_d, offset_h, offset_w + 1, channel_start, out)
    return shifted


# the checks added with the padding kernels and the transposed convolution's general path: a wrong
# version of the function each one calls fails it
@pytest.mark.parametrize("name, module, function, wrong", [
    ("embed_strided", padding, "embed_strided", off_in_the_last_element),
    ("pad_channels_last", padding, "pad_kernel", shifted_along_w),
    ("pad_and_concatenate", padding, "pad_kernel", shifted_along_w),
    ("conv_transpose3d_general_forward", conv3d, "conv3d_grad_input", off_in_the_last_element),
    ("conv_transpose3d_general_grad_input", conv3d, "conv3d_forward", off_in_the_last_element),
    ("conv_transpose3d_general_grad_weight", conv3d_grad_weight, "conv3d_grad_weight",
     off_in_the_last_element)])
def test_a_wrong_kernel_fails_the_new_checks(name, module, function, wrong, monkeypatch, capsys):
    assert check.main([name]) == 0
    capsys.readouterr()
    monkeypatch.setattr(module, function, wrong(getattr(module, function)))
    assert check.main([name]) == 1
    output = capsys.readouterr().out
    results = [row[-1] for row in table_rows(output)]
    assert len(results) == len(check.rows_of(check.KERNELS[name])) and "FAIL" in results
    assert output.rstrip().endswith(f"KERNEL CHECK FAILED: {name}")


def test_a_kernel_that_raises_is_a_failed_row(monkeypatch, capsys):
    def broken(x, y):
        raise IndexError("index 7 is out of bounds")

    monkeypatch.setattr(relu, "relu_forward", broken)
    assert check.main(["relu"]) == 1
    output = capsys.readouterr().out
    assert {row[-1] for row in table_rows(output) if row[0] == "relu_forward"} == {"FAIL"}
    assert {row[-1] for row in table_rows(output) if row[0] == "relu_backward"} == {"pass"}
    assert "  relu_forward, N2 3x5x7 C3, float32, width -: error: IndexError: index 7 is out of bounds" in output


@pytest.mark.parametrize("argv, says", [(["conv3d_foward"], "did you mean 'conv3d_forward'?"),
                                        (["relu", "softmax"], "no kernel or family 'softmax'"),
                                        (["--bogus"], "unrecognized arguments: --bogus")])
def test_a_bad_name_is_one_line_and_exit_2(argv, says, capsys):
    try:
        status = check.main(argv)
    except SystemExit as exit:                 # argparse's own errors
        status = exit.code
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert len(captured.err.splitlines()) == 1 and says in captured.err


def test_list_names_every_kernel_and_its_reference(capsys):
    assert check.main(["--list"]) == 0
    output = capsys.readouterr().out
    for kernel in check.KERNELS.values():
        assert any(line.split()[:2] == [kernel.family, kernel.name] and line.rstrip().endswith(kernel.reference)
                   for line in output.splitlines()), kernel.name


def test_command_line_entry_point():
    result = subprocess.run([sys.executable, "-m", "nn3d.kernels.check", "nonsense"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == ("python -m nn3d.kernels.check: no kernel or family 'nonsense' "
                                     "(--list lists them)")

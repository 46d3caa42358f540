"""docs/kernels/*_steps.py, the kernel ladders, run and agree: each script, at a small odd size (a
partial register tile and a partial Winograd tile at every face), exits 0 and prints one row per step
whose max error against step 0 is within the tolerance it prints. Times are not checked (noisy)."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LADDERS = {"conv3d_steps.py": 5, "winograd_steps.py": 5}            # script: number of steps
ROW = re.compile(r"^(\d+) \w+ .* (\d\.\d\de[+-]\d\d)(?:  \(.*)?$")      # step, ..., max error
TOLERANCE = re.compile(r"^tolerance: max error <= .* = (\d\.\d\de[+-]\d\d): every step within it")


def test_both_ladders_run_and_every_step_is_within_tolerance():
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    runs = {script: subprocess.Popen([sys.executable, os.path.join(ROOT, "docs", "kernels", script),
                                      "--size", "13", "--repeats", "1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=environment)
            for script in LADDERS}                          # both at once: their compilations overlap
    for script, process in runs.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{script} exited {process.returncode}:\n{stdout}\n{stderr}"
        lines = stdout.splitlines()
        rows = [ROW.match(line) for line in lines if ROW.match(line)]
        assert [int(row.group(1)) for row in rows] == list(range(LADDERS[script])), stdout
        tolerance = [TOLERANCE.match(line) for line in lines if TOLERANCE.match(line)]
        assert len(tolerance) == 1, stdout
        limit = float(tolerance[0].group(1))
        for row in rows:
            assert float(row.group(2)) <= limit, f"{script}: step {row.group(1)}: {row.group(2)} > {limit}"
        assert float(rows[0].group(2)) == 0.0                          # step 0 against itself


def test_a_step_outside_the_tolerance_fails_the_run(capsys):
    """The harness's verdict: one weight lost (a bug's typical size) exceeds the tolerance, exit 1."""
    sys.path.insert(0, os.path.join(ROOT, "docs", "kernels"))
    try:
        import ladder
    finally:
        sys.path.pop(0)
    from nn3d.kernels.padding import pad_channels_last
    from nn3d.kernels.reference import conv3d_forward_reference

    def reference(x, weight, bias):
        return conv3d_forward_reference(pad_channels_last(x, (1, 1, 1)), weight, bias, (1, 1, 1))

    def lost_weight(x, weight, bias):
        weight = weight.copy()
        weight[0, 0, 1, 1, 1] = 0
        return reference(x, weight, bias)

    arguments = type("Arguments", (), {"size": 9, "repeats": 1})
    assert ladder.run("test", [(reference, None), (lost_weight, None)], arguments) == 1
    assert "EXCEEDED" in capsys.readouterr().out

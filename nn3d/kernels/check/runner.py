"""Running the checks of `KERNELS` and printing their table; `main` is `python -m nn3d.kernels.check`."""
import difflib
import sys

import numpy as np

from ...gradcheck import max_absolute_error, max_relative_error
from .. import register_tile
from .registry import DTYPES, KERNELS, SEED, tile_widths, tolerance


def rows_of(kernel):
    """(case number, case, dtype, width) for every row of a kernel; width None for kernels without a
    register tile. Every row of a case draws the same random numbers (float32 gets them rounded)."""
    widths = kernel.tiled if isinstance(kernel.tiled, tuple) else tile_widths() if kernel.tiled else (None,)
    return [(number, case, dtype, width) for number, case in enumerate(kernel.cases)
            for dtype in DTYPES for width in widths]


def row_name(kernel_name, output):
    return kernel_name if output is None else f"{kernel_name}: {output}"


def run_kernel(kernel, report):
    """Run every case of one kernel; report(...) each output. Returns the number of failed rows."""
    failures = 0
    for number, case, dtype, width in rows_of(kernel):
        rng = np.random.default_rng([SEED, number])
        try:
            outputs = kernel.run(case, dtype, width, rng)
        except Exception as error:                          # a crash is a failure of that row, not the run
            report(kernel.name, case, dtype, width, None, None, None, f"error: {type(error).__name__}: {error}")
            failures += 1
            continue
        for output, ours, expected, length in outputs:
            name = row_name(kernel.name, output)
            ours = np.asarray(ours)
            limit = tolerance(ours.dtype if np.issubdtype(ours.dtype, np.floating) else dtype, length)
            if ours.shape != np.shape(expected):
                report(name, case, dtype, width, None, None, limit, f"FAIL: shape {ours.shape}, expected "
                                                                    f"{np.shape(expected)}")
                failures += 1
                continue
            relative = max_relative_error(ours, expected)
            passed = relative <= limit                      # NaN compares False: a NaN fails
            failures += not passed
            report(name, case, dtype, width, max_absolute_error(ours, expected), relative, limit,
                   "pass" if passed else "FAIL")
    return failures


def select(names):
    """The kernels named (by kernel or family name, in registration order), or the unknown name."""
    for name in names:
        if not any(name in (kernel.name, kernel.family) for kernel in KERNELS.values()):
            return None, name
    return [kernel for kernel in KERNELS.values() if not names or {kernel.name, kernel.family} & set(names)], None


def print_list():
    families = list(dict.fromkeys(kernel.family for kernel in KERNELS.values()))
    print(f"{'family':<18}{'kernel':<37}{'fast kernel (nn3d/kernels/)':<34}reference (nn3d/kernels/)")
    for family in families:
        for kernel in (k for k in KERNELS.values() if k.family == family):
            print(f"{family:<18}{kernel.name:<37}{kernel.source:<34}{kernel.reference}")
    print(f"\nwidths of the register tiles: {', '.join(map(str, tile_widths()))} "
          f"(this CPU compiles for {register_tile.BLOCK_W})")


def unknown_name_line(name):
    names = sorted({kernel.name for kernel in KERNELS.values()} | {kernel.family for kernel in KERNELS.values()})
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"python -m nn3d.kernels.check: no kernel or family '{name}'{hint} (--list lists them)"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m nn3d.kernels.check",
        description="Check nn3d's fast kernels against their plain NumPy references in float32 and "
                    "float64 at every register-tile width.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="kernels or families to check (default: all; --list lists them)")
    parser.add_argument("--list", action="store_true", help="list the kernels, their files and references")
    parser.error = lambda message: (print(f"python -m nn3d.kernels.check: {message}", file=sys.stderr),
                                    sys.exit(2))
    args = parser.parse_args(argv)
    if args.list:
        print_list()
        return 0
    kernels, unknown = select(args.names)
    if unknown is not None:
        print(unknown_name_line(unknown), file=sys.stderr)
        return 2

    kernel_width = max(len(row_name(kernel.name, output)) for kernel in kernels for output in kernel.outputs) + 2
    case_width = max(len(case.label) for kernel in kernels for case in kernel.cases) + 2
    print(f"nn3d kernels vs their plain references, register-tile widths {' and '.join(map(str, tile_widths()))} "
          f"(this CPU compiles for {register_tile.BLOCK_W})")
    print("(pass: max relative error <= tolerance; relative to max |reference|, the reference in float64)")
    print(f"{'kernel':<{kernel_width}}{'case':<{case_width}}{'dtype':<9}{'width':>5}{'max abs err':>14}"
          f"{'max rel err':>14}{'tolerance':>11}  result")
    messages = []
    rows = 0

    def report(name, case, dtype, width, absolute, relative, limit, result):
        nonlocal rows
        rows += 1
        if result not in ("pass", "FAIL"):
            messages.append(f"  {name}, {case.label}, {np.dtype(dtype).name}, width {width or '-'}: {result}")
            result = "FAIL"
        number = lambda value, digits=3: f"{value:.{digits}e}" if value is not None else "-"
        limit_text = "-" if limit is None else "0" if limit == 0 else number(limit, 1)
        print(f"{name:<{kernel_width}}{case.label:<{case_width}}{np.dtype(dtype).name:<9}"
              f"{width or '-':>5}{number(absolute):>14}{number(relative):>14}{limit_text:>11}  {result}",
              flush=True)

    failed = [kernel.name for kernel in kernels if run_kernel(kernel, report)]
    if messages:
        print("\nerrors:\n" + "\n".join(messages))
    if failed:
        print(f"\nKERNEL CHECK FAILED: {', '.join(failed)}")
        return 1
    print(f"\nall {rows} checks pass")
    return 0

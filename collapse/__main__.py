"""python -m collapse launch|status|report|cancel|compare [args] (or the `collapse` console script of an
install): runs sweeps/<command>.py with the same arguments and --help, from the checkout's sweeps/ or the
copy an installed package ships (collapse/config.py TREE), so an install does what the checkout does."""
import runpy
import sys

from collapse.config import TREE

COMMANDS = ("launch", "status", "report", "cancel", "compare")


def usage() -> str:
    return ("usage: python -m collapse COMMAND [key=value ...]   (or: collapse COMMAND ...)\n"
            f"COMMAND: {', '.join(COMMANDS)}; each does what python sweeps/COMMAND.py does, with the same "
            "arguments;\n`python -m collapse COMMAND --help` says which.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: command '{argv[0]}' is not allowed; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    script = TREE / "sweeps" / f"{argv[0]}.py"
    sys.argv = [str(script), *argv[1:]]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:   # the scripts end with sys.exit(code)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

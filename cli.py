"""The command-line rules every script shares, without torch, so that a script can answer quickly:
one-line usage errors, every default in --help, and expected failures as one line with exit code 2."""
import argparse
import importlib
import os
import sys
import types

# The names --model accepts everywhere; model.build_model builds each. Kept here, not in model.py,
# because a parser must list them without importing torch.
MODEL_NAMES = ("simplecnn", "simplecnn_bn", "simplecnn_deep", "simplecnn_gap", "resnet18", "resnet34", "resnet50")


# pip's name for each import name that differs from it
PACKAGE_OF = {"cv2": "opencv-python-headless", "PIL": "pillow", "sklearn": "scikit-learn", "dlib": "dlib-bin",
              "face_recognition_models": "face-recognition-models", "pi_heif": "pi-heif"}


def _missing_package_hook(kind, exc, tb, previous_hook=sys.excepthook):
    """A missing requirement fails at a script's first imports, before run_cli can catch anything: one line
    that names the package and the install command, not an ImportError's traceback (--debug shows it). Scripts
    import cli before any third-party package so that this hook is in place first."""
    if not issubclass(kind, ModuleNotFoundError) or not exc.name or "--debug" in sys.argv:
        return previous_hook(kind, exc, tb)
    name = exc.name.split(".")[0]
    sys.stdout.flush()
    print(f"error: the package {PACKAGE_OF.get(name, name)} is missing from this Python ({sys.executable}); "
          f"install the project's requirements: pip install -r requirements.txt", file=sys.stderr)
    sys.stderr.flush()
    os._exit(2)


# only where one of this project's scripts is running: a program of the user's that imports inference keeps its own
_MAIN_FILE = getattr(sys.modules.get("__main__"), "__file__", None)
if _MAIN_FILE and os.path.dirname(os.path.abspath(_MAIN_FILE)) == os.path.dirname(os.path.abspath(__file__)):
    sys.excepthook = _missing_package_hook


class LazyModule(types.ModuleType):
    """A module imported on its first attribute access. `torch = lazy_import("torch")` lets a module
    name torch at its top while `--help` and torch-free paths (ONNX inference, eda) never pay the
    1-2 s that importing torch costs."""

    def __getattr__(self, attr):
        return getattr(importlib.import_module(self.__name__), attr)


def lazy_import(name: str) -> types.ModuleType:
    return sys.modules.get(name) or LazyModule(name)


class ReaderGone(Exception):
    """The reader of stdout closed it (`--json - | head`): the run stops quietly, as Unix tools do."""


class DataError(Exception):
    """A problem with the user's input that a one-line message explains (no traceback)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and every option's default after its help (unless the help
    already names it, or there is none to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "%(default)" in text or "(default:" in text or not action.option_strings or hidden:
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (the full usage is one --help away) and whose --help
    shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has left (a BrokenPipeError from elsewhere is a real error)."""
    try:
        import select
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no file descriptor
        return True


def run_cli(main, parser):
    """Parse, run, and turn expected failures into one line on stderr with exit code 2."""
    for stream in (sys.stdout, sys.stderr):  # a console or log that cannot show a file's name: escaped, not fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = parser.parse_args()
    try:
        return main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ReaderGone, BrokenPipeError) as exc:  # `--json - | head -1`: the reader has what it wanted
        if isinstance(exc, BrokenPipeError) and not stdout_gone():  # another pipe: an error like any other
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second complaint at exit's flush
        sys.exit(141)
    except (DataError, ValueError, RuntimeError, OSError) as exc:  # NonFiniteLossError is a RuntimeError
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        if getattr(args, "debug", False):
            raise
        print("error: out of memory; a smaller photo, batch size or image size needs less (--debug shows where)",
              file=sys.stderr)
        sys.exit(2)
    except Exception as exc:
        # cv2.error (an image OpenCV cannot resize, encode or denoise) is no RuntimeError; its message is
        # several lines of C++ source, of which the last says what was wrong
        if type(exc).__module__ != "cv2" or getattr(args, "debug", False):
            raise
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        print(f"error: OpenCV failed ({lines[-1][:200] if lines else type(exc).__name__}); --debug shows where",
              file=sys.stderr)
        sys.exit(2)

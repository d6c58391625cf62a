import subprocess
import sys

from audiossl.version import __version__
from audiossl.cli.main import VERBS, main


def test_help_lists_verbs(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


def test_version_and_unknown_verb(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main(["no-such-verb"]) == 2
    assert "unknown verb" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "audiossl", "--help"], capture_output=True, text=True, check=True)
    assert "verbs:" in out.stdout

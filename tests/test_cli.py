"""The click shell: help, version, errors as one line."""

from click.testing import CliRunner

from cli.main import cli
from dait_cache import __version__


def test_help_and_version():
    r = CliRunner().invoke(cli, ["-h"])
    assert r.exit_code == 0 and "--workdir" in r.output
    r = CliRunner().invoke(cli, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output


def test_datasets_lists_what_is_present(tmp_path):
    r = CliRunner().invoke(cli, ["datasets", "--data-root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "synthetic" in r.output and "960" in r.output

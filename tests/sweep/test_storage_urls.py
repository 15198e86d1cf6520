"""Study storage URLs: no password is ever printed or written, whatever the URL's form; a missing or
unknown database driver is a one-line error naming what to install."""

from __future__ import annotations

import sys
import types
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from betavae.cli import main
from betavae.errors import ConfigError
from betavae.sweep import SweepSpec
from betavae.sweep.storage import check_storage_url, redact_text, redact_url
from tests.sweep.conftest import tiny_args

MARK = "Zx9"  # in every generated password, and nowhere else: a password can only show up by leaking

#: A password (with MARK inside) -> storage URLs that hold it in every form a user may write.
FORMS = [
    lambda pw, q: f"postgresql://alice:{q}@127.0.0.1:1/sweeps",
    lambda pw, q: f"postgresql://alice:{pw}@127.0.0.1:1/sweeps",  # not percent-encoded
    lambda pw, q: f"postgres://alice:{q}@127.0.0.1:1/sweeps?sslmode=disable",
    lambda pw, q: f"postgresql+psycopg://alice:{q}@127.0.0.1:1/sweeps",
    lambda pw, q: f"postgresql+psycopg2://alice:{q}@127.0.0.1:1/sweeps",
    lambda pw, q: f"postgresql+asyncpg://alice:{q}@127.0.0.1:1/sweeps",
    lambda pw, q: f"postgresql://alice@127.0.0.1:1/sweeps?password={q}",
    lambda pw, q: f"postgresql://alice@127.0.0.1:1/sweeps?sslmode=disable&sslpassword={quote_plus(pw)}",
    lambda pw, q: f"postgresql://alice@127.0.0.1:1/sweeps?PassWord={q}&application_name=a@b",
    lambda pw, q: f"postgresql://alice:{q}@127.0.0.1:1/sweeps?password={q}",
    lambda pw, q: f"postgresql://alice:{q}@127.0.0.1:notaport/sweeps",
    lambda pw, q: f"postgresql://alice:{q}@127.0.0.1:99999/sweeps",
    lambda pw, q: f"postgresql://alice:{q}@[::1:1/sweeps",
    lambda pw, q: f"mysql://alice:{q}@127.0.0.1:1/db",
    lambda pw, q: f"mysql://alice:{pw}@127.0.0.1:1/db",
    lambda pw, q: f"redis://:{q}@localhost:6379/0",
    lambda pw, q: f"sqlite://alice:{q}@/study.db",
    lambda pw, q: f"alice:{q}@127.0.0.1/sweeps",
    lambda pw, q: f"mysql:alice:{pw}@host",
]
PASSWORDS = st.builds(lambda a, b: a + MARK + b, st.text(max_size=8), st.text(max_size=8)).filter(
    lambda pw: "\x00" not in pw)


def _forms_of(password: str) -> set[str]:
    """The password as written, percent-encoded and decoded: none may be shown."""
    return {password, quote(password, safe=""), quote_plus(password), unquote(password), unquote_plus(password)}


def _assert_hidden(text: str, password: str) -> None:
    for form in _forms_of(password):
        assert form not in text, f"password {form!r} shown in: {text!r}"


@settings(max_examples=150, deadline=None)
@given(password=PASSWORDS, form=st.sampled_from(range(len(FORMS))))
def test_redact_url_and_check_storage_url_never_show_a_password(password, form):
    url = FORMS[form](password, quote(password, safe=""))
    shown = redact_url(url)
    _assert_hidden(shown, password)
    assert "***" in shown
    try:
        check_storage_url(url)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        _assert_hidden(str(exc), password)
    assert password not in repr(SweepSpec(out="s", weights=[1.0], seeds=[0], storage=url))


@settings(max_examples=60, deadline=None)
@given(password=PASSWORDS, form=st.sampled_from(range(len(FORMS))))
def test_library_messages_that_quote_the_url_are_masked(password, form):
    url = FORMS[form](password, quote(password, safe=""))
    message = f"Could not parse SQLAlchemy URL from string '{url}' (password {unquote(password)!s})"
    _assert_hidden(redact_text(message, url), password)


@pytest.mark.parametrize("url, shown", [
    ("mysql://alice:S3cretPW@127.0.0.1:1/db", "mysql://alice:***@127.0.0.1:1/db"),
    ("postgresql://u:pw@h/db?password=x&sslmode=require", "postgresql://u:***@h/db?password=***&sslmode=require"),
    ("postgresql://u@h/db?sslpassword=abc", "postgresql://u@h/db?sslpassword=***"),
    ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://sweep@127.0.0.1:5432/db", "postgresql://sweep@127.0.0.1:5432/db"),  # nothing to hide
    ("sqlite:////tmp/me@work/study.db", "sqlite:////tmp/me@work/study.db"),
])
def test_redacted_urls_keep_everything_but_the_password(url, shown):
    assert redact_url(url) == shown


@pytest.fixture
def fast_retries(monkeypatch):
    """open_study retries a failing storage with pauses; the tests do not wait for them."""
    import time

    from betavae.sweep import study

    monkeypatch.setattr(study, "time", types.SimpleNamespace(sleep=lambda s: None, monotonic=time.monotonic))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(password=PASSWORDS, form=st.sampled_from(range(len(FORMS))))
def test_sweep_command_fails_cleanly_and_writes_nothing(password, form, toy_npz, tmp_path, capsys, fast_retries):
    url = FORMS[form](password, quote(password, safe=""))
    out = tmp_path / "sweep"
    code = main(tiny_args(toy_npz, out, "--storage", url))  # nothing listens on port 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert err.startswith("betavae: error:") and "\n" not in err and "Traceback" not in err
    _assert_hidden(captured.out + captured.err, password)
    assert not out.exists()


def test_unsupported_scheme_from_the_issue(toy_npz, tmp_path, capsys):
    assert main(tiny_args(toy_npz, tmp_path / "s", "--storage", "mysql://alice:S3cretPW@127.0.0.1:1/db")) == 2
    err = capsys.readouterr().err
    assert "S3cretPW" not in err and "unsupported study storage 'mysql://alice:***@127.0.0.1:1/db'" in err


def test_library_error_quoting_the_url_is_masked(toy_npz, tmp_path, capsys, monkeypatch):
    from sqlalchemy.exc import ArgumentError

    from betavae.sweep import study

    def fail(optuna, spec, url, engine_kwargs):
        raise ArgumentError(f"Could not parse SQLAlchemy URL from string '{url}'")

    monkeypatch.setattr(study, "_open", fail)
    monkeypatch.setattr(study, "time", types.SimpleNamespace(sleep=lambda s: None))
    url = "postgresql://alice:Hunter2Secret@127.0.0.1:1/db?sslpassword=KeyPass99"
    assert main(tiny_args(toy_npz, tmp_path / "s", "--storage", url)) == 2
    err = capsys.readouterr().err
    assert "Could not parse SQLAlchemy URL" in err and "postgresql+psycopg://alice:***@127.0.0.1:1/db" in err
    assert "Hunter2Secret" not in err and "KeyPass99" not in err and "Traceback" not in err


@pytest.mark.parametrize("url, install", [
    ("postgresql://alice:S3cretPW@127.0.0.1:1/db", "pip install 'betavae[postgres]'"),
    ("postgres://alice:S3cretPW@127.0.0.1:1/db", "pip install 'betavae[postgres]'"),
    ("postgresql+psycopg://alice:S3cretPW@127.0.0.1:1/db", "pip install 'betavae[postgres]'"),
    ("postgresql+psycopg2://alice:S3cretPW@127.0.0.1:1/db", "pip install psycopg2-binary"),
])
def test_missing_driver_names_the_package_to_install(url, install, toy_npz, tmp_path, capsys, monkeypatch):
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # 'import psycopg' now raises ImportError
    with pytest.raises(ConfigError, match="install it with"):
        check_storage_url(url)
    assert main(tiny_args(toy_npz, tmp_path / "s", "--storage", url)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("betavae: error:") and "\n" not in err and install in err and "S3cretPW" not in err
    assert not (tmp_path / "s").exists()


def test_unknown_driver_and_ambiguous_at_sign_are_refused():
    with pytest.raises(ConfigError, match="unsupported PostgreSQL driver 'asyncpg'"):
        check_storage_url("postgresql+asyncpg://u:pw@h/db")
    with pytest.raises(ConfigError, match="percent-encode") as exc:
        check_storage_url("postgresql://u:p@sQwK7x@h/db")
    assert "sQwK7x" not in str(exc.value)
    assert check_storage_url("postgresql://u:p%40ssword@h/db") == "postgresql+psycopg://u:p%40ssword@h/db"
    assert check_storage_url("postgres://u@h/db?application_name=a@b").startswith("postgresql+psycopg://")


def test_a_sweep_on_a_password_url_writes_the_password_nowhere(toy_npz, tmp_path, capsys, postgres_url):
    # the test cluster trusts every connection, so the password is accepted and never checked
    password = "Pw-" + MARK + "-only-in-the-url"
    url = postgres_url.replace("://sweep@", f"://sweep:{quote(password, safe='')}@") + f"?sslpassword={password}"
    out = tmp_path / "sweep"
    assert main(tiny_args(toy_npz, out, "--storage", url, "--metric", "mig", seeds="1")) == 0
    captured = capsys.readouterr()
    assert "sweep:***@127.0.0.1" in captured.err and "sslpassword=***" in captured.err
    _assert_hidden(captured.out + captured.err, password)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "summary.json" for p in files) and len(files) > 10
    for path in files:
        data = path.read_bytes()
        for form in _forms_of(password):
            assert form.encode() not in data, f"{path} holds the storage password"

"""Shell completion through click's _JW_COMPLETE mechanism, including job ids."""

from __future__ import annotations

from cli_fixtures import Jw


def complete(jw: Jw, words: str, user: str | None = "alice") -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    result = jw(
        user=user,
        env={"_JW_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)},
    )
    assert result.exit_code == 0
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


def test_bash_source_script(jw: Jw) -> None:
    result = jw(user=None, env={"_JW_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_jw_completion" in result.stdout


def test_commands_complete(jw: Jw) -> None:
    assert complete(jw, "jw st") == ["start", "status", "stop"]


def test_job_ids_complete(jw: Jw) -> None:
    job_id = jw.start("true")
    assert job_id in complete(jw, "jw status ")
    assert complete(jw, f"jw logs {job_id[:13]}") == [job_id]


def test_job_id_completion_is_silent_without_a_server(jw: Jw) -> None:
    assert complete(jw, "jw status ", user=None) == []

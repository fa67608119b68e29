"""What the README tells people to run and to expect, checked against what happens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from bff.webhooks import EVENT_TYPES

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start : end if end != -1 else None]


def test_the_webhook_table_lists_every_event_with_what_it_carries() -> None:
    rows = dict(re.findall(r"^\| `([a-z_.]+)` \| (.*?) \|", section("### Webhooks to your back-end"), re.M))
    assert set(EVENT_TYPES) <= set(rows)
    assert all("not sent" not in row for row in rows.values()), rows
    # The scripts section names the fields of script.finished: the table says the same.
    listed = re.search(r"`script\.finished` webhook \(`([^`]+)`\)", " ".join(README.split()))
    assert listed is not None
    assert rows["script.finished"] == f"`{listed.group(1)}`"


def test_the_look_inside_one_liner_prints_the_url_and_nothing_else(data_dir_outside_pytest: Path) -> None:
    command = re.search(r'^python3 -c "(.+)"$', section("### The embedded PostgreSQL"), re.M)
    assert command is not None
    # A server without a login session: no XDG_RUNTIME_DIR (platformdirs warns about that).
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR" and not k.startswith("BFF_")}
    result = subprocess.run(
        [sys.executable, "-c", command.group(1)],
        cwd=data_dir_outside_pytest,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.fullmatch(r"postgresql://\S+/bff\?host=\S+\n", result.stdout), result.stdout
    assert (data_dir_outside_pytest / "bff-data" / "postgres" / "PG_VERSION").exists()

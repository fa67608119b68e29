"""The widget's hand-written types and the README's TypeScript, checked by TypeScript itself under
``--strict`` (the compiler comes from the npm registry: ``.ci/npm-fixtures``)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tsc() -> list[str]:
    fixtures = os.environ.get("BFF_NPM_FIXTURES")
    tsc = Path(fixtures) / "typescript" / "bin" / "tsc" if fixtures else None
    node = shutil.which("node")
    if tsc is None or not tsc.exists() or node is None:
        pytest.skip("no TypeScript compiler: run `bash .ci/npm-fixtures` and set BFF_NPM_FIXTURES (.ci/run does)")
    return [node, str(tsc)]


def _compile(tmp_path: Path, sources: dict[str, str]) -> subprocess.CompletedProcess[str]:
    types = tmp_path / "types" / "peliqan"
    types.mkdir(parents=True)
    for name in ("peliqan-integration.d.ts", "peliqan-status.d.ts"):
        shutil.copy(ROOT / "widget" / name, types / name)
    for name, text in sources.items():
        (tmp_path / name).write_text(text + "\nexport {};\n")
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "esnext",
            "moduleResolution": "bundler",
            "lib": ["es2022", "dom"],
            "paths": {"https://bff.example.com/embed/v1/*": ["./types/peliqan/*"]},
        },
        "include": ["*.ts"],
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    return subprocess.run([*_tsc(), "-p", str(tmp_path)], capture_output=True, text=True, timeout=120)


def test_the_readmes_typescript_compiles_under_strict(tmp_path: Path) -> None:
    blocks = re.findall(r"```ts\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2, "the README's TypeScript section"
    done = _compile(tmp_path, {f"readme{i}.ts": block for i, block in enumerate(blocks)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_types_refuse_what_the_widget_refuses(tmp_path: Path) -> None:
    """A compiler that accepts everything would pass the test above: this one must fail."""
    wrong = (
        'import { syncServer } from "https://bff.example.com/embed/v1/peliqan-integration.js";\n'
        "syncServer({ serverId: 1 });\n"  # no identityToken
        "Peliqan.initialize({ integrationToken: 42 });\n"
    )
    done = _compile(tmp_path, {"wrong.ts": wrong})
    assert done.returncode != 0
    assert "wrong.ts(2," in done.stdout and "'identityToken' is missing" in done.stdout, done.stdout
    assert "wrong.ts(3," in done.stdout and "not assignable to type 'string'" in done.stdout, done.stdout

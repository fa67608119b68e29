"""The SDK's lifecycle functions (disableServer, enableServer, syncServer full) make the calls
the contract names, run in node with a recording fetch."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SDK = Path(__file__).resolve().parent.parent / "widget" / "peliqan-sdk.js"
NODE = shutil.which("node")

SCRIPT = """
const calls = [];
globalThis.fetch = async (url, init) => {
  calls.push({url, method: init.method, body: init.body ?? null, auth: init.headers.Authorization});
  const status = url.endsWith('/enable') ? 409 : 200;
  const body = status == 409 ? {code: 'connection_not_disabled', detail: 'This connection is not disabled.'} : {id: 7, health_status: 'DISABLED'};
  return {ok: status < 300, status, json: async () => body};
};
class PeliqanError extends Error { constructor(code, message, status = 0) { super(message); Object.assign(this, {code, status}); } }
const sdk = (await import(process.argv[1])).default({PeliqanError, base: 'https://bff.test', form: () => null});
const out = {};
out.disabled = await sdk.disableServer({identityToken: 'tok', serverId: 7});
out.enable = await sdk.enableServer({identityToken: 'tok', serverId: 7}).then(() => 'resolved', (e) => [e.code, e.status]);
await sdk.syncServer({identityToken: 'tok', serverId: 7, full: true});
out.calls = calls;
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="needs node")
def test_disable_enable_and_full_sync_call_the_contract_paths() -> None:
    assert NODE is not None
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", SCRIPT, SDK.as_uri()],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out = json.loads(result.stdout)
    assert out["disabled"] == {"id": 7, "health_status": "DISABLED"}
    assert out["enable"] == ["connection_not_disabled", 409]
    assert [(c["method"], c["url"], c["body"]) for c in out["calls"]] == [
        ("POST", "https://bff.test/api/server/7/disable", "{}"),
        ("POST", "https://bff.test/api/server/7/enable", "{}"),
        ("POST", "https://bff.test/api/server/7/sync", '{"full":true}'),
    ]
    assert {c["auth"] for c in out["calls"]} == {"Bearer tok"}

"""Clients generated from /openapi.json by the tools partners bring (DESIGN §16).

``openapi-python-client`` (the [test] extra) must generate a client without a warning, and that
client drives the main flow against a real server: sub-account → integrate and identity tokens →
servertypes → connect with an API key → the config step → sync with ``wait`` → tables and rows
with filters → a writeback add → a query table → a script run and its runs. Every answer is also
checked against the document's schema for its status. ``openapi-typescript`` (npm, fetched by
.ci/npm-fixtures) must give types that compile under ``tsc --strict`` with a small usage file.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import serve_in_thread
from jsonschema import Draft202012Validator

from bff.app import create_app
from bff.cli import create_partner
from bff.openapi import build_spec
from bff.settings import Settings

PACKAGE = "bff_generated_client"


def generate_python_client(spec: dict[str, Any], where: Path) -> str:
    """Run openapi-python-client on ``spec``; returns what it printed (it must not warn)."""
    document = where / "openapi.json"
    document.write_text(json.dumps(spec))
    bin_dir = str(Path(sys.executable).parent)  # its post-hooks run ruff from the same environment
    result = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document)]
        + ["--output-path", str(where / PACKAGE), "--meta", "none"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


class Contract:
    """Checks each raw answer against the schema the document gives for its path, method and status."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.checked: list[str] = []

    def check(self, method: str, path: str, response: Any) -> Any:
        answers = self.spec["paths"][path][method.lower()]["responses"]
        status = str(int(response.status_code))
        assert status in answers, f"{method} {path} answered {status}: {response.content[:500]!r}"
        schema = answers[status]["content"]["application/json"]["schema"]
        Draft202012Validator({"components": self.spec["components"], **schema}).validate(json.loads(response.content))
        self.checked.append(f"{method} {path} {status}")
        return response.parsed


class Tag:
    """``Tag("partner").create_sub_account``: the generated module of one operation (one per operationId)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __getattr__(self, name: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{self.tag}.{name}")


@pytest.fixture
def generated(tmp_path: Path, settings_factory: Callable[..., Settings]) -> Iterator[tuple[Any, dict[str, Any]]]:
    spec = build_spec(create_app(settings_factory(sandbox_enabled=True)).routes)
    printed = generate_python_client(spec, tmp_path)
    assert "WARNING" not in printed and "Unable to" not in printed, printed
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE), spec
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


async def test_generated_python_client_drives_the_main_flow(
    generated: tuple[Any, dict[str, Any]], settings_factory: Callable[..., Settings]
) -> None:
    pkg, spec = generated
    models = importlib.import_module(f"{PACKAGE}.models")
    partner_api, conn_api, sync_api = Tag("partner"), Tag("connections"), Tag("sync")
    wh_api, qt_api, wb_api, sc_api = Tag("warehouse"), Tag("query_tables"), Tag("writeback"), Tag("scripts")
    contract = Contract(spec)
    settings = settings_factory(sandbox_enabled=True)
    with serve_in_thread(settings) as base_url:
        partner_token = (await create_partner(settings, "acme", []))["token"]
        with pkg.AuthenticatedClient(base_url=base_url, token=partner_token) as partner:
            created = contract.check(
                "POST",
                "/api/partner/sub-account",
                partner_api.create_sub_account.sync_detailed(
                    client=partner, body=models.SubAccountFields(external_id="gen-1", company_name="Wood")
                ),
            )
            assert isinstance(created, models.SubAccount) and created.external_id == "gen-1"
            integrate = contract.check(
                "POST",
                "/api/partner/sub-account/integrate",
                partner_api.mint_integrate_token.sync_detailed(
                    client=partner, body=models.SubAccountFields(external_id="gen-1")
                ),
            )
            identity = contract.check(
                "GET",
                "/api/partner/sub-account/identity",
                partner_api.mint_identity_token.sync_detailed(client=partner, external_id="gen-1"),
            )
            assert integrate.account_id == identity.account_id == created.id
            refused = partner_api.mint_identity_token.sync_detailed(client=partner)  # no account named
            assert refused.status_code == 400 and isinstance(refused.parsed, models.Error)
            assert refused.parsed.code == "validation_error" and "account_id" in refused.parsed.errors.to_dict()

        with pkg.AuthenticatedClient(base_url=base_url, token=integrate.token) as browser:
            catalogue = contract.check(
                "GET",
                "/api/servertypes",
                conn_api.list_servertypes.sync_detailed(client=browser, locale=models.ListServertypesLocale("nl")),
            )
            accounting = next(s for s in catalogue.results if s.name == "sandbox_accounting")
            assert accounting.config_select is not None
            body = models.ConnectionCreate(servertype_id=accounting.id, name="Books")
            body.additional_properties["api_key"] = "sandbox-valid-key"
            connection = contract.check(
                "POST", "/api/servers", conn_api.create_server.sync_detailed(client=browser, body=body)
            )
            assert connection.health_status == "CONFIG_SELECT"
            options = contract.check(
                "GET",
                "/api/server/{id}/config-options",
                conn_api.get_config_options.sync_detailed(connection.id, client=browser),
            )
            assert options.field == accounting.config_select.field and options.selected == []
            chosen = [str(option.value) for option in options.options][:2]
            ready = contract.check(
                "POST",
                "/api/server/{id}/config",
                conn_api.save_config.sync_detailed(
                    connection.id, client=browser, body=models.ConfigChoice.from_dict({options.field: chosen})
                ),
            )
            assert ready.health_status == "OK"
            synced = contract.check(
                "POST",
                "/api/server/{id}/sync",
                sync_api.sync_server.sync_detailed(connection.id, client=browser, wait=60.0),
            )
            assert synced.run is not None and synced.run.status == "succeeded", synced.to_dict()
            runs = contract.check(
                "GET", "/api/server/{id}/runs", sync_api.list_server_runs.sync_detailed(connection.id, client=browser)
            )
            assert [run.id for run in runs.results] == [synced.run.pipeline_run_id]

        with pkg.AuthenticatedClient(base_url=base_url, token=identity.token) as back_end:
            databases = contract.check(
                "GET", "/api/applications", wh_api.list_applications.sync_detailed(client=back_end)
            )
            database_id = databases.results[0].id
            tables = contract.check(
                "GET",
                "/api/database/tables/database/{database_id}",
                wh_api.list_tables.sync_detailed(database_id, client=back_end),
            )
            invoices = next(t for t in tables.results if t.name == "invoices")
            everything = contract.check(
                "GET",
                "/api/database/rows/table/{table_id}",
                wh_api.list_rows.sync_detailed(invoices.id, client=back_end, user_field_names=True, page_size=500),
            )
            division = str(everything.results[0].to_dict()["division"])
            filtered = contract.check(
                "GET",
                "/api/database/rows/table/{table_id}",
                wh_api.list_rows.sync_detailed(
                    invoices.id,
                    client=back_end,
                    user_field_names=True,
                    order_by="-amount",
                    filters=models.RowFilters.from_dict({"filter__division__equal": division}),
                ),
            )
            rows = [row.to_dict() for row in filtered.results]
            assert rows and 0 < filtered.count < everything.count
            assert {str(row["division"]) for row in rows} == {division}
            amounts = [float(row["amount"]) for row in rows]
            assert amounts == sorted(amounts, reverse=True)

            added = contract.check(
                "POST",
                "/api/server/{id}/records/{object}",
                wb_api.add_record.sync_detailed(
                    connection.id,
                    "invoice",
                    client=back_end,
                    body=models.RecordFields.from_dict({"division": int(chosen[0]), "customer": "Gen", "amount": 12.5}),
                ),
            )
            assert added.id and added.record["customer"] == "Gen"

            query_table = contract.check(
                "POST",
                "/api/table",
                qt_api.create_query_table.sync_detailed(
                    client=back_end,
                    body=models.QueryTableCreate(
                        name="big_invoices", query=f"SELECT id, amount FROM {invoices.sql_name} WHERE amount > 0"
                    ),
                ),
            )
            assert query_table.type_ == models.TableType.QUERY and query_table.connection is None
            listed = contract.check(
                "GET",
                "/api/database/tables/database/{database_id}",
                wh_api.list_tables.sync_detailed(database_id, client=back_end),
            )
            assert {t.name for t in listed.results} >= {"invoices", "big_invoices"}
            query_rows = contract.check(
                "GET",
                "/api/database/rows/table/{table_id}",
                wh_api.list_rows.sync_detailed(query_table.id, client=back_end, user_field_names=True),
            )
            assert query_rows.count > 0 and set(query_rows.results[0].to_dict()) >= {"id", "amount"}

            script = contract.check(
                "POST",
                "/api/interface",
                sc_api.create_script.sync_detailed(
                    client=back_end, body=models.ScriptCreate(name="hello", raw_code="print('hi from a script')")
                ),
            )
            run = contract.check(
                "POST",
                "/api/interface/{script_id}/run",
                sc_api.run_script.sync_detailed(script.id, client=back_end, wait=60.0),
            )
            assert run.status == models.ScriptRunStatus.SUCCEEDED and run.output == "hi from a script\n"
            script_runs = contract.check(
                "GET",
                "/api/interface/{script_id}/runs",
                sc_api.list_script_runs.sync_detailed(script.id, client=back_end),
            )
            assert [r.id for r in script_runs.results] == [run.id]
    assert len(contract.checked) == 20


def npm_fixtures() -> Path | None:
    raw = os.environ.get("BFF_NPM_FIXTURES")
    return Path(raw) if raw else None


def test_openapi_typescript_types_compile_under_tsc_strict(
    tmp_path: Path, settings_factory: Callable[..., Settings]
) -> None:
    fixtures = npm_fixtures()
    cli = (
        (fixtures or Path("/nonexistent"))
        / "openapi-typescript"
        / "node_modules"
        / "openapi-typescript"
        / "bin"
        / "cli.js"
    )
    node = shutil.which("node")
    if fixtures is None or node is None or not cli.exists():
        if os.environ.get("CI"):
            pytest.fail(
                "BFF_NPM_FIXTURES (with openapi-typescript and typescript) and node are needed; .ci/run sets them"
            )
        pytest.skip("run .ci/npm-fixtures and export BFF_NPM_FIXTURES")
    spec = build_spec(create_app(settings_factory(sandbox_enabled=True)).routes)
    (tmp_path / "openapi.json").write_text(json.dumps(spec))
    made = subprocess.run(
        [node, str(cli), str(tmp_path / "openapi.json"), "--output", str(tmp_path / "api.d.ts")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    (tmp_path / "usage.ts").write_text(USAGE)
    tsc = fixtures / "typescript" / "bin" / "tsc"
    compiled = subprocess.run(
        [node, str(tsc), "--strict", "--noEmit", "--target", "es2022", "--module", "esnext"]
        + ["--moduleResolution", "bundler", str(tmp_path / "usage.ts"), str(tmp_path / "api.d.ts")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


# What a partner's TypeScript does with the generated types: typed requests and answers of the main flow.
USAGE = """
import type { components, operations, paths } from "./api";

type Schemas = components["schemas"];
type Json<T> = T extends { content: { "application/json": infer B } } ? B : never;

const base = "http://localhost:8000";

async function call<T>(path: string, init: RequestInit): Promise<T> {
  const answer = await fetch(base + path, init);
  if (!answer.ok) {
    const error = (await answer.json()) as Schemas["Error"];
    throw new Error(`${error.code}: ${error.detail}`);
  }
  return (await answer.json()) as T;
}

export async function mainFlow(partnerToken: string): Promise<string[]> {
  const headers = { Authorization: `Bearer ${partnerToken}`, "Content-Type": "application/json" };
  const fields: Schemas["SubAccountFields"] = { external_id: "ts-1", company_name: "Wood" };
  const token = await call<Json<operations["mintIntegrateToken"]["responses"][200]>>(
    "/api/partner/sub-account/integrate",
    { method: "POST", headers, body: JSON.stringify(fields) },
  );
  const expires: number | null = token.expires_at;
  const mine = { Authorization: `Bearer ${token.token}`, "Content-Type": "application/json" };
  const catalogue = await call<Schemas["ServertypePage"]>("/api/servertypes?locale=nl", { headers: mine });
  const accounting = catalogue.results.find((s) => s.name === "sandbox_accounting");
  if (!accounting || !accounting.config_select) throw new Error("no accounting connector");
  const create: Schemas["ConnectionCreate"] = { servertype_id: accounting.id, api_key: "sandbox-valid-key" };
  const connection = await call<Schemas["Connection"]>("/api/servers", {
    method: "POST", headers: mine, body: JSON.stringify(create),
  });
  const options = await call<Schemas["ConfigOptions"]>(`/api/server/${connection.id}/config-options`, { headers: mine });
  const choice: Schemas["ConfigChoice"] = { [options.field]: options.options.map((o) => o.value) };
  await call<Schemas["Connection"]>(`/api/server/${connection.id}/config`, {
    method: "POST", headers: mine, body: JSON.stringify(choice),
  });
  const started = await call<Schemas["SyncStarted"]>(`/api/server/${connection.id}/sync?wait=60`, {
    method: "POST", headers: mine,
  });
  const finished: string | null = started.run ? started.run.finished_at : null;
  const rowsQuery: operations["listRows"]["parameters"]["query"] = { user_field_names: true, order_by: "-amount" };
  const table: Schemas["Table"] = (await call<Schemas["TablePage"]>("/api/database/tables/database/1", { headers: mine })).results[0];
  const connectionOfTable: number | null = table.connection;
  const run: Schemas["ScriptRun"] = await call<Schemas["ScriptRun"]>("/api/interface/1/run?wait=60", { method: "POST", headers: mine });
  const status: "queued" | "running" | "succeeded" | "failed" = run.status;
  const listRuns: paths["/api/interface/{script_id}/runs"]["get"]["parameters"]["path"] = { script_id: 1 };
  return [String(expires), String(finished), String(rowsQuery?.order_by), String(connectionOfTable), status, String(listRuns.script_id)];
}
"""


def test_the_recipe_names_operations_that_exist() -> None:
    """docs/generated-clients.md (linked from the README) imports generated modules by tag and
    operationId, and lists operationIds: each must be one the document has."""
    from bff.contract.operations import OPERATIONS

    recipe = (Path(__file__).resolve().parents[1] / "docs" / "generated-clients.md").read_text()
    snake = {(op.tag.replace("-", "_"), re.sub(r"(?<!^)(?=[A-Z])", "_", op.id).lower()) for op in OPERATIONS.values()}
    imported = [
        (tag, name.strip())
        for tag, names in re.findall(r"from bff_api_client\.api\.(\w+) import ([\w, ]+)", recipe)
        for name in names.split(",")
    ]
    assert len(imported) >= 6 and set(imported) <= snake
    listed = set(re.findall(r"`([a-z]+[A-Z]\w+)`", recipe)) - {"operationId"}
    assert len(listed) >= 10 and listed <= {op.id for op in OPERATIONS.values()}

"""A connector session: one connection's provider, with auth, retries and token refresh.

:class:`ConnectorSession` offers ``test()``, ``config_options()`` and ``read()``
(an async iterator of :class:`Page`); :class:`bff.connectors.writer.Writer`
and the raw proxy build on its :meth:`ConnectorSession.request`.

Incremental state (what :attr:`Page.state` holds) is crash-safe to persist in
the same transaction as the page's records:

* non-incremental streams: ``{}``;
* incremental: ``{"cursor": <highest cursor value seen>}``, or
  ``{"partitions": {"101": {"cursor": …}, …}}`` for partitioned streams.

With ``"order": "asc"`` the cursor advances page by page; with
``"desc"``/``"none"`` it only advances on the last page of a partition, so a
crash mid-way repeats the partition instead of skipping rows. Incremental
filters are treated as exclusive (``> cursor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .errors import ConfigRequired, CredentialsRejected, ProviderError
from .oauth import OAuthClient, OAuthTokens, refresh_tokens
from .pagers import pages
from .records import compile_normaliser, compile_row_maker, decode_json, format_cursor, page_cursor
from .retry import RetryPolicy
from .spec import Connector, Paging, Stream
from .templates import Path, Placeholders, Template, get_path
from .transport import USER_AGENT, LogFn, basic_auth, provider_message, send, short, url_path

__all__ = ["ConnectorSession", "Page"]


@dataclass(frozen=True)
class Page:
    """One provider page, normalised. Persist ``state`` together with ``records``.

    ``records`` are dicts of the declared fields, or tuples in declaration order when read with
    ``rows=True``. ``plain``: no text in them holds a backslash, tab, newline or carriage return
    (the page's JSON had no backslash, and JSON allows those characters in strings only escaped),
    so a COPY can take the values as they are.
    """

    stream: str
    partition: str | None
    records: list[Any]
    state: dict[str, Any]
    plain: bool = False


class ConnectorSession:
    """Talks to one connection's provider: test credentials, list config options, read streams.

    ``credentials`` holds the connect-form values (API key, login, …);
    ``config`` holds the CONFIG_SELECT choices (e.g. ``{"divisions": ["101"]}``);
    ``context`` holds deployment values, at least ``sandbox`` (the BFF's
    ``<public url>/sandbox``). For OAuth2 connectors pass ``oauth_client`` and
    ``tokens``; every refresh is reported through ``on_tokens`` so the caller can
    persist rotated tokens. ``log(level, message)`` receives retry warnings
    (paths only, never query strings, headers or secrets).
    """

    def __init__(
        self,
        connector: Connector,
        *,
        http: httpx.AsyncClient,
        credentials: Mapping[str, str],
        config: Mapping[str, Any],
        context: Mapping[str, Any],
        policy: RetryPolicy | None = None,
        oauth_client: OAuthClient | None = None,
        tokens: OAuthTokens | None = None,
        on_tokens: Callable[[OAuthTokens], Awaitable[None]] | None = None,
        log: LogFn | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        timeout: float = 120.0,
    ) -> None:
        self.connector = connector
        self._http = http
        self._credentials = dict(credentials or {})
        self._config = dict(config or {})
        self._context = dict(context or {})
        self.policy = policy or RetryPolicy.default()
        self._oauth_client = oauth_client
        self._tokens = tokens
        self._on_tokens = on_tokens
        self._log: LogFn = log or (lambda level, message: None)
        self._clock = clock
        self._sleep = sleep
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._lookups: dict[str, str] = {}
        self._base_url: str | None = None
        self._origin: tuple[str | None, tuple[str, str, int | None] | None] = (None, None)
        self.display = connector.display_name
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        headers.update(dict(connector.headers))
        self._static_headers = headers

    @property
    def tokens(self) -> OAuthTokens | None:
        """The current OAuth tokens (after any refresh)."""
        return self._tokens

    # ------------------------------------------------------------------ secrets

    def secret_values(self) -> list[str]:
        """Every credential, token and client secret in play (to scrub from text)."""
        values = [v for v in self._credentials.values() if isinstance(v, str) and len(v) >= 4]
        if self._tokens is not None:
            values += [v for v in (self._tokens.access_token, self._tokens.refresh_token) if v]
        if self._oauth_client is not None and self._oauth_client.client_secret:
            values.append(self._oauth_client.client_secret)
        return values

    def scrub(self, text: str) -> str:
        for value in self.secret_values():
            if value in text:
                text = text.replace(value, "***")
        return text

    # ------------------------------------------------------------------ templates

    def placeholders(self, *, quote_values: bool = False, **values: Any) -> Placeholders:
        """The resolver for this connection (``values``: partition, record_id, fields, match)."""
        return Placeholders(
            self.display,
            context=self._context,
            config=self._config,
            credentials=self._credentials,
            lookups=self._lookups,
            quote_values=quote_values,
            **values,
        )

    async def prepare(self, templates: Iterable[Template]) -> None:
        """Fetch the ``{lookup.x}`` values the given templates need (once per session)."""
        for tpl in templates:
            for name in tpl.names:
                root, _, key = name.partition(".")
                if root == "lookup" and key not in self._lookups:
                    spec = self.connector.lookup(key)
                    url = await self.url(spec.path)
                    params = self.params(spec.params)
                    _, body = await self._call("GET", url, params, f"lookup {key}")
                    value = get_path(body, spec.value_path)
                    if value is None or isinstance(value, (dict, list)):
                        raise ProviderError(f"{self.display} did not tell us its {key.replace('_', ' ')}.")
                    self._lookups[key] = str(value)

    async def base_url(self) -> str:
        if self._base_url is None:
            await self.prepare([self.connector.base_url])
            # Values are URL-quoted so a typed-in field (Pipedrive's company domain)
            # cannot move the host, e.g. "evil.test/#" stays inside ".pipedrive.com".
            self._base_url = self.connector.base_url.render(self.placeholders(quote_values=True)).rstrip("/")
        return self._base_url

    async def url(self, path: Template, **values: Any) -> str:
        await self.prepare([path])
        return await self.base_url() + path.render(self.placeholders(quote_values=True, **values))

    def params(self, params: tuple[tuple[str, Template], ...], **values: Any) -> dict[str, str]:
        resolve = self.placeholders(**values)
        return {k: t.render(resolve) for k, t in params}

    # ------------------------------------------------------------------ auth

    def _apply_auth(self, headers: dict[str, str], params: dict[str, str]) -> str | None:
        auth = self.connector.auth
        kind = auth.kind
        if kind == "bearer":
            assert self._tokens is not None
            headers["Authorization"] = "Bearer " + self._tokens.access_token
            return self._tokens.access_token
        if kind == "none":
            return None
        if kind == "basic":
            user = self._credential(auth.username_field)
            password = self._credentials.get(auth.password_field) if auth.password_field else None
            headers["Authorization"] = basic_auth(user, password)
            return None
        value = self._credential(auth.field)
        if kind == "header":
            assert auth.header
            headers[auth.header] = auth.prefix + value
        else:
            assert auth.param
            params[auth.param] = value
        return None

    def auth_names(self) -> tuple[set[str], set[str]]:
        """Header and query-parameter names that carry credentials (lower-case headers)."""
        auth = self.connector.auth
        headers = {"authorization", "cookie", "proxy-authorization"}
        params: set[str] = set()
        if auth.kind == "header" and auth.header:
            headers.add(auth.header.lower())
        if auth.kind == "query" and auth.param:
            params.add(auth.param)
        return headers, params

    def _credential(self, name: str | None) -> str:
        value = self._credentials.get(name or "")
        if not value:
            label = next((f.label for f in self.connector.connect_form if f.name == name), name)
            raise CredentialsRejected(f"{self.display} needs the '{label}' field; fill in the connect form again.")
        return str(value)

    async def _ensure_fresh(self) -> None:
        tokens = self._tokens
        if tokens is None:
            raise CredentialsRejected(f"{self.display} is not authorised yet; connect it first.")
        if tokens.expires_soon(self._clock()):
            async with self._lock:  # one refresh at a time; others wait and reuse it
                tokens = self._tokens
                if tokens is not None and tokens.expires_soon(self._clock()):
                    await self._refresh()

    async def _refresh_after_401(self, used_token: str | None) -> None:
        async with self._lock:
            if self._tokens is not None and self._tokens.access_token != used_token:
                return  # another request already refreshed while we were waiting
            await self._refresh()

    async def _refresh(self) -> None:
        tokens = self._tokens
        if tokens is None or not tokens.refresh_token:
            raise CredentialsRejected(
                f"{self.display}'s access has expired and cannot be renewed automatically; reconnect it."
            )
        if self._oauth_client is None:
            raise CredentialsRejected(
                f"{self.display}'s access has expired and this server has no OAuth client to renew it."
            )
        new = await refresh_tokens(
            self.connector,
            http=self._http,
            client=self._oauth_client,
            refresh_token=tokens.refresh_token,
            context={**self._context, "config": self._config, "credentials": self._credentials},
            clock=self._clock,
            policy=self.policy,
            sleep=self._sleep,
            log=self._log,
        )
        self._tokens = new
        self._log("info", f"{self.display}: access token renewed")
        if self._on_tokens is not None:
            await self._on_tokens(new)

    # ------------------------------------------------------------------ HTTP

    def check_origin(self, url: httpx.URL) -> None:
        # Never send credentials to a host the provider points us to unless it is the API's own host.
        if (url.scheme, url.host, url.port) != self._base_origin():
            raise ProviderError(
                f"{self.display} pointed the next page to another host; refusing to send credentials there."
            )

    def _base_origin(self) -> tuple[str, str, int | None] | None:
        """The API's scheme, host and port (parsed once per base URL, not on every page)."""
        parsed_from, origin = self._origin
        if parsed_from != self._base_url:
            base = httpx.URL(self._base_url) if self._base_url else None
            origin = None if base is None else (base.scheme, base.host, base.port)
            self._origin = (self._base_url, origin)
        return origin

    def auth_error(self, status: int | None) -> CredentialsRejected:
        if self.connector.auth.kind == "bearer":
            return CredentialsRejected(
                f"{self.display} rejected the authorisation even after renewing the access token; reconnect it.",
                status=status,
            )
        return CredentialsRejected(
            f"{self.display} rejected the credentials; check them and connect again.", status=status
        )

    async def request(
        self,
        method: str,
        url: str | httpx.URL,
        params: Mapping[str, str] | None,
        label: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        is_auth_failure: Callable[[httpx.Response], bool] = lambda r: r.status_code == 401,
        raise_on_auth: bool = True,
    ) -> httpx.Response:
        """One API call with auth, the retry policy and the 401 → refresh → retry rule.

        Any other answer (4xx included) is returned. A credential rejection that
        survives a token refresh raises :class:`CredentialsRejected` unless
        ``raise_on_auth`` is false (the proxy passes it through).
        """
        oauth = self.connector.auth.kind == "bearer"
        refreshed = False
        while True:
            if oauth:
                await self._ensure_fresh()
            all_headers = dict(self._static_headers)
            if headers:
                all_headers.update(headers)
            query = dict(params) if params else {}
            used = self._apply_auth(all_headers, query)
            target: str | httpx.URL = url
            if query and "?" in str(url):
                # httpx would replace the URL's own query with `params`; merge instead
                # (next-page URLs carry their own query).
                target = httpx.URL(str(url)).copy_merge_params(query)
                query = {}
            response = await send(
                self._http,
                method,
                target,
                params=query or None,
                headers=all_headers,
                content=content,
                policy=self.policy,
                sleep=self._sleep,
                clock=self._clock,
                timeout=self._timeout,
                log=self._log,
                label=label,
                display=self.display,
            )
            if not is_auth_failure(response):
                return response
            if oauth and not refreshed:
                self._log("info", f"{label}: {self.display} rejected the access token; renewing it once")
                await self._refresh_after_401(used)
                refreshed = True
                continue
            if not raise_on_auth:
                return response
            raise self.auth_error(response.status_code)

    def check_response(self, body: Any) -> str | None:
        """The error code of an HTTP 200 answer flagged as failed (``response_check``), else ``None``."""
        check = self.connector.response_check
        if check is not None and isinstance(body, dict) and get_path(body, check.ok_path) is not True:
            return str(get_path(body, check.error_path))
        return None

    def flagged_auth_failure(self, response: httpx.Response) -> bool:
        if response.status_code == 401:
            return True
        check = self.connector.response_check
        if check is None or not check.auth_errors or not 200 <= response.status_code < 300:
            return False
        try:
            return self.check_response(json.loads(response.content or b"null")) in check.auth_errors
        except ValueError:
            return False

    async def _call(
        self, method: str, url: str | httpx.URL, params: Mapping[str, str] | None, label: str, *, want_json: bool = True
    ) -> tuple[httpx.Response, Any]:
        """A read: :meth:`request`, then the read path's error mapping (403, 4xx, flagged 200s)."""
        response = await self._answer(method, url, params, label)
        return response, self._body(response, method, url, want_json=want_json)

    async def _answer(
        self, method: str, url: str | httpx.URL, params: Mapping[str, str] | None, label: str
    ) -> httpx.Response:
        return await self.request(method, url, params, label, is_auth_failure=self.flagged_auth_failure)

    def _body(self, response: httpx.Response, method: str, url: str | httpx.URL, *, want_json: bool = True) -> Any:
        """The decoded body of a read's answer, or the read path's error for it."""
        status = response.status_code
        body: Any = None
        if 200 <= status < 300 and (want_json or self.connector.response_check):
            body = self.json(response)
            error = self.check_response(body)
            if error is not None:
                raise ProviderError(
                    f"{self.display} reported an error ({short(self.scrub(error))}) on {method} {url_path(url)}.",
                    code="provider_error",
                    status=status,
                )
        if status == 403:
            raise CredentialsRejected(
                f"{self.display} refused access (HTTP 403); the account may lack the permissions this connector needs.",
                status=status,
            )
        if status >= 400:
            try:
                detail = provider_message(response.json())
            except ValueError:
                detail = None
            suffix = f": {self.scrub(detail)}" if detail else ""
            raise ProviderError(
                f"{self.display} answered HTTP {status} on {method} {url_path(url)}{suffix}.",
                code="not_found" if status == 404 else "provider_error",
                status=status,
            )
        return body

    def json(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        try:
            return decode_json(response.content)
        except ValueError:
            raise ProviderError(
                f"{self.display} answered with something that is not JSON on "
                f"{response.request.method} {url_path(response.request.url)}."
            ) from None

    def records(self, body: Any, path: Path, where: str) -> list[Any]:
        records = get_path(body, path) if path else body
        if records is None:
            return []  # e.g. Pipedrive's `"data": null` on an empty list
        if not isinstance(records, list):
            raise ProviderError(f"{self.display} answered in an unexpected shape (no list of {where}).")
        if records and not isinstance(records[0], dict):
            raise ProviderError(f"{self.display} answered in an unexpected shape ({where} are not objects).")
        return records

    def _pages(
        self,
        paging: Paging,
        url: str,
        params: dict[str, str],
        records_path: Path,
        label: str,
        answers: list[httpx.Response] | None = None,
    ) -> AsyncGenerator[tuple[list[Any], bool]]:
        """The stream's pages; ``answers`` (when given) holds the answer of the page just yielded."""

        async def fetch(target: str | httpx.URL, query: dict[str, str] | None, followed: bool) -> httpx.Response:
            if followed:
                self.check_origin(target if isinstance(target, httpx.URL) else httpx.URL(target))
            return await self._answer("GET", target, query, label)

        def body_of(response: httpx.Response) -> Any:
            body = self._body(response, "GET", response.request.url)
            if answers is not None:
                answers[:] = [response]
            return body

        return pages(
            paging,
            url,
            params,
            fetch=fetch,
            body_of=body_of,
            records_of=lambda body: self.records(body, records_path, label),
            display=self.display,
        )

    # ------------------------------------------------------------------ public API

    async def test(self) -> None:
        """Prove the credentials work; raises :class:`CredentialsRejected` or :class:`ProviderError`."""
        spec = self.connector.test
        await self.prepare([spec.path, *(t for _, t in spec.params)])
        url = await self.url(spec.path)
        response, body = await self._call(
            spec.method, url, self.params(spec.params), "connection test", want_json=spec.expect_json is not None
        )
        if response.status_code != spec.expect_status:
            raise ProviderError(
                f"{self.display} answered HTTP {response.status_code} instead of {spec.expect_status} "
                "when checking the connection.",
                status=response.status_code,
            )
        if spec.expect_json is not None and get_path(body, spec.expect_json) is None:
            raise ProviderError(f"{self.display} answered, but not with the account information we expected.")

    async def config_options(self) -> list[dict[str, str]]:
        """Options for the CONFIG_SELECT step, e.g. ``[{"value": "101", "label": "Acme Holding"}]``."""
        spec = self.connector.config_select
        if spec is None:
            return []
        url = await self.url(spec.path)
        params = self.params(spec.params)
        options: list[dict[str, str]] = []
        seen: set[str] = set()
        pages = self._pages(spec.paging, url, params, spec.records_path, "config options")
        async with contextlib.aclosing(pages):
            async for records, _ in pages:
                for record in records:
                    value = get_path(record, spec.value_path)
                    if value is None or str(value) in seen:
                        continue
                    seen.add(str(value))
                    label = get_path(record, spec.label_path)
                    options.append(
                        {"value": str(value), "label": str(label) if label not in (None, "") else str(value)}
                    )
        return options

    def _partition_values(self) -> list[str]:
        key = self.connector.partition_by
        assert key is not None
        raw = self._config.get(key)
        if isinstance(raw, (list, tuple)):
            values = [str(v) for v in raw if v not in (None, "")]
        elif raw in (None, ""):
            values = []
        else:
            values = [str(raw)]
        if not values:
            label = self.connector.config_select.label if self.connector.config_select else key
            raise ConfigRequired(f"Choose {label.lower()} for {self.display} before syncing.")
        return values

    async def read(
        self,
        stream: str,
        state: Mapping[str, Any] | None = None,
        *,
        partitions: Sequence[str] | None = None,
        rows: bool = False,
    ) -> AsyncIterator[Page]:
        """Page through ``stream`` (every partition, or only ``partitions``), incrementally from ``state``.

        Each :class:`Page` carries normalised records (dicts; with ``rows`` tuples in the order of
        the stream's fields) and the state to persist with them (see the module docstring for its
        shape); the cursors of partitions not read are kept.
        """
        try:
            spec = self.connector.stream(stream)
        except KeyError:
            raise ProviderError(f"{self.display} has no table named {stream!r}.", code="unknown_stream") from None
        if spec.rows is not None:  # documented rows no endpoint serves: nothing to call
            normalise = (compile_row_maker if rows else compile_normaliser)(spec.fields)
            yield Page(spec.name, None, [normalise(row) for row in spec.rows], {})
            return
        state = state or {}
        if not spec.partitioned:
            start = state.get("cursor") if spec.incremental else None
            async with contextlib.aclosing(self._read_one(spec, None, start, rows=rows)) as read:
                async for records, cursor, plain in read:
                    state_out = {"cursor": cursor} if spec.incremental and cursor is not None else {}
                    yield Page(spec.name, None, records, state_out, plain)
            return
        previous = state.get("partitions") if spec.incremental else None
        done: dict[str, dict[str, Any]] = {}
        if isinstance(previous, Mapping):
            done = {str(k): dict(v) for k, v in previous.items() if isinstance(v, Mapping)}
        for value in list(partitions) if partitions else self._partition_values():
            start = done.get(value, {}).get("cursor") if spec.incremental else None
            async with contextlib.aclosing(self._read_one(spec, value, start, rows=rows)) as read:
                async for records, cursor, plain in read:
                    if spec.incremental:
                        if cursor is not None:
                            done[value] = {"cursor": cursor}
                        out: dict[str, Any] = {"partitions": {k: dict(v) for k, v in done.items()}}
                    else:
                        out = {}
                    yield Page(spec.name, value, records, out, plain)

    async def deleted_ids(self, stream: str, since: str | None) -> tuple[list[str], str | None]:
        """The ids the provider reports deleted since ``since`` (its own cursor value), and the
        cursor to send next time. Only for streams with ``deletions.kind == "deleted_ids"``."""
        spec = self.connector.stream(stream)
        deletions = spec.deletions
        if deletions is None or deletions.kind != "deleted_ids" or deletions.path is None:
            return [], since
        url = await self.url(deletions.path)
        params = {deletions.since_param: since} if since else {}
        _, body = await self._call("GET", url, params, f"deleted {stream}")
        ids: list[str] = []
        cursor = since
        for item in self.records(body, deletions.records_path, f"deleted {stream}"):
            record_id = get_path(item, deletions.id_path)
            if record_id is None:
                continue
            ids.append(str(record_id))
            stamp = get_path(item, deletions.cursor_path)
            if stamp is not None and (cursor is None or str(stamp) > cursor):
                cursor = str(stamp)
        return ids, cursor

    async def _read_one(
        self, spec: Stream, partition: str | None, start: Any, *, rows: bool = False
    ) -> AsyncGenerator[tuple[list[Any], Any, bool]]:
        """Yield ``(normalised records, cursor to persist, plain)`` per page of one partition
        (``plain``: see :class:`Page`)."""
        inc = spec.incremental
        url = await self.url(spec.path, partition=partition)
        params = self.params(spec.params, partition=partition)
        if inc is not None:
            if start is None and inc.start is not None:
                start = inc.start.render(self.placeholders())
            if start is not None:
                params[inc.param] = format_cursor(inc, start)
        normalise: Callable[[Any], Any] = (compile_row_maker if rows else compile_normaliser)(spec.fields)
        label = spec.name if partition is None else f"{spec.name} [{partition}]"
        best = start
        cursor_field = inc.cursor_field if inc else ""
        # Where the cursor is in a record: its key, or its position in a row (None: not a field).
        names = [f.name for f in spec.fields]
        at: Any = (names.index(cursor_field) if cursor_field in names else None) if rows else cursor_field
        answers: list[httpx.Response] = []
        async with contextlib.aclosing(
            self._pages(spec.paging, url, params, spec.records_path, label, answers)
        ) as pages:
            async for raw, last in pages:
                records = [normalise(r) for r in raw]
                plain = bool(answers) and b"\\" not in answers[0].content
                if inc is None:
                    yield records, None, plain
                    continue
                if at is not None:
                    best = page_cursor([r[at] for r in records] if rows else [r.get(at) for r in records], best)
                yield records, best if (inc.order == "asc" or last) else start, plain

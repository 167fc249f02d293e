"""`graft serve`: the curator workbench — a local page over the store to review proposals,
ask why the model believes one, and watch cycles.

Concurrency: DuckDB lets one process hold a file read-write, and no other process can open
it meanwhile, so the server never keeps the store open. Each request opens it (read-only for
GET, read-write for a decision), does its work and closes it, waiting while a CLI command
holds it (graph.store.LOCK_WAIT); the CLI waits the same way for the server. Decisions go
through loop.review.decide — the same function as `graft review`, one transaction that sets
statuses of pending proposals only and stakes every accepted, unstaked one — so whichever
process comes second finds the proposal decided and changes nothing. Inside the server one
lock serialises store access: DuckDB refuses a read-write and a read-only connection to one
file in one process.

Safety: the default bind is loopback; anything else needs a token (check_bind). With a token,
every request carries it (Authorization: Bearer, X-Graft-Token, or the cookie that
`/?token=T` sets). Without one, the Host header must be a loopback name (against DNS
rebinding). A state change is a POST of JSON with the page's per-server CSRF token in
X-CSRF-Token and a same-origin Origin (a bearer-token header stands in for both). JSON is
HTML-safe (<, >, & as \\u escapes) and the page writes data with textContent only, under a
CSP without inline script.
"""
from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import math
import secrets
import threading
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from graph import sql, sql_loop
from graph.errors import GraftError, StoreBusy
from graph.store import LOCK_WAIT, Store

STATIC = Path(__file__).parent / "static"
COOKIE, CSRF_HEADER = "graft_token", "x-csrf-token"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def is_loopback(host: str) -> bool:
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token: anyone who reaches the port could decide."""
    if not is_loopback(host) and not token:
        raise GraftError(f"refusing to serve on {host} without --token: anyone who can reach "
                         "this port could read the store and accept proposals; pass --token T "
                         "(or set GRAFT_TOKEN), or keep the default --host 127.0.0.1")


class SafeJSON(JSONResponse):
    """JSON that is inert inside HTML: <, > and & escaped; NaN and ±inf as null."""

    def render(self, content) -> bytes:
        text = json.dumps(_finite(content), ensure_ascii=False, separators=(",", ":"))
        return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
                .encode("utf-8"))


def _finite(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


class DecideBody(BaseModel):
    accept: list[int] = []
    reject: list[int] = []
    accept_above: float | None = None
    cycle: int | None = None
    reviewer: str = Field("curator", min_length=1, max_length=100)


class NoteBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    text: str = Field(max_length=1_000_000)
    top: int = Field(10, ge=1, le=100)


class NoteAcceptBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    text: str = Field(max_length=1_000_000)
    dst: str = Field(min_length=1, max_length=200)
    score: float = 0.0
    confidence: float = Field(0.5, ge=0.0, le=1.0)
    reviewer: str = Field("curator", min_length=1, max_length=100)


class Workbench:
    """The app's state: where the store is, the secrets, and the per-process store lock."""

    def __init__(self, db: Path, token: str | None, model: Path | None, neuron: str,
                 link_token: str, wait: float):
        self.db, self.token, self.model = Path(db), token, Path(model) if model else None
        self.neuron, self.link_token, self.wait = neuron, link_token, wait
        self.csrf = secrets.token_urlsafe(32)
        self.lock = threading.Lock()
        self.focus: tuple[int, dict[str, float]] = (-1, {})   # (max_seq, π) cache

    @contextlib.contextmanager
    def store(self, write: bool = False):
        with self.lock, Store(self.db, create=False, read_only=not write, wait=self.wait) as s:
            yield s

    def guard(self, request: Request) -> tuple[int, str] | None:
        """Why this request is refused (status, message), or None."""
        headers = request.headers
        host = headers.get("host", "")
        by_header = _same(self.token, _bearer(headers))
        if self.token is None:
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if not is_loopback(name):
                return 403, f"Host {host!r} is not a loopback name (DNS rebinding guard)"
        elif not (by_header or _same(self.token, request.cookies.get(COOKIE))
                  or (request.url.path == "/" and _same(self.token, request.query_params.get("token")))):
            return 401, ("this workbench needs its token: open the URL `graft serve` printed "
                         "(…/?token=…) or send Authorization: Bearer T")
        if request.method in ("GET", "HEAD") or by_header:
            return None
        if request.method != "POST" or not headers.get("content-type", "").startswith(
                "application/json"):
            return 415, "state changes are POST requests with a JSON body"
        if not _same(self.csrf, headers.get(CSRF_HEADER)):
            return 403, "missing or wrong X-CSRF-Token (reload the page)"
        origin = headers.get("origin")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return 403, f"cross-origin request from {origin!r} refused"
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return 403, "cross-site request refused"
        return None

    def focus_of(self, store: Store) -> dict[str, float]:
        """π over the store's links now; links are append-only, so max_seq keys the cache."""
        max_seq = store.scalar(sql.MAX_SEQ)
        if self.focus[0] != max_seq:
            from graph.stats import current_focus
            self.focus = (max_seq, current_focus(store))
        return self.focus[1]

    def model_dir(self, store: Store) -> tuple[Path | None, str]:
        """The checkpoint the why panel traces: --model, else the latest cycle's compiled
        model; with a reason when there is none."""
        if self.model is not None:
            return self.model, ""
        from loop.cycle import cycle_metrics, recorded_model
        for row in reversed(cycle_metrics(store)):
            if not row.get("model"):
                continue
            folder = recorded_model(row, self.db)
            if folder is not None:
                return folder, ""
            return None, (f"cycle {row['cycle']}'s model {row['model']} is not on disk here; "
                          "start `graft serve --model DIR`")
        return None, ("no checkpoint known: no cycle has compiled a model in this store; run "
                      "`graft cycle`, or start `graft serve --model DIR`")


def _vault(wb: Workbench, required: bool = True) -> tuple[Path | None, str]:
    """(root, flavor) of the one vault this store imported."""
    from graph import sql_vault
    with wb.store() as store:
        vaults = store.query(sql_vault.VAULTS)
    if len(vaults) == 1:
        return Path(vaults[0][0]), vaults[0][1]
    if not required:
        return None, "obsidian"
    raise GraftError("no vault imported into this store (graft import vault DIR)" if not vaults
                     else f"{len(vaults)} vaults imported; the new-note view writes to one")


def _note_path(root: Path, source: str) -> Path:
    """root/source, refusing anything outside the vault or not a .md file."""
    path = (root / source).resolve()
    if not path.is_relative_to(root.resolve()) or path.suffix != ".md":
        raise GraftError(f"{source!r}: not a note of the vault {root}")
    return path


def _bearer(headers) -> str | None:
    auth = headers.get("authorization", "")
    return auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-graft-token")


def _same(secret: str | None, given: str | None) -> bool:
    return bool(secret) and given is not None and hmac.compare_digest(secret.encode(),
                                                                      given.encode())


def create_app(db_path: str | Path, token: str | None = None, model_dir: str | Path | None = None,
               *, neuron: str = "graft-extractor", link_token: str = "link",
               wait: float = LOCK_WAIT) -> FastAPI:
    """The workbench app over the store at `db_path` (migrated once here, then opened per
    request). `token` guards every request; `model_dir` is the why panel's checkpoint."""
    with Store(db_path, create=False, wait=wait):     # migrate now: requests read only
        pass
    wb = Workbench(Path(db_path), token or None, Path(model_dir) if model_dir else None,
                   neuron, link_token, wait)
    app = FastAPI(title="graft workbench", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=SafeJSON)
    app.state.workbench = wb

    @app.middleware("http")
    async def guard(request: Request, call_next):
        refused = wb.guard(request)
        response = (SafeJSON({"error": refused[1]}, status_code=refused[0]) if refused
                    else await call_next(request))
        response.headers.update(HEADERS)
        return response

    @app.exception_handler(GraftError)
    async def graft_error(request: Request, exc: GraftError):
        return SafeJSON({"error": str(exc)}, status_code=503 if isinstance(exc, StoreBusy) else 400)

    @app.get("/")
    def index(request: Request, token: str | None = None):
        if token is not None:        # keep the token out of the address bar and history
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        return Response(page.replace("{{csrf}}", wb.csrf), media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    _api(app, wb)
    return app


def _api(app: FastAPI, wb: Workbench) -> None:
    """The JSON routes the page calls; GET routes open the store read-only."""
    from loop.review import decide, list_proposals

    @app.get("/api/proposals")
    def proposals(status: str = "pending", cycle: int | None = None, limit: int = 200):
        if status not in ("pending", "accepted", "rejected", "all"):
            raise GraftError(f"status {status!r}: expected pending, accepted, rejected or all")
        with wb.store() as store:
            rows = list_proposals(store, None if status == "all" else status, cycle, limit)
            ends = sorted({r["src"] for r in rows} | {r["dst"] for r in rows})
            aliases = store.aliases_of(ends)
            semcons = store.names_of(sorted({r["semcon"] for r in rows if r["semcon"]}))
            counts = dict(store.query(sql_loop.PROPOSALS_BY_STATUS))
        for r in rows:
            r["src_aliases"], r["dst_aliases"] = aliases.get(r["src"], []), aliases.get(r["dst"], [])
            r["semcon_name"] = semcons.get(r["semcon"])
        return {"proposals": rows, "counts": counts}

    @app.get("/api/above")
    def above(threshold: float, cycle: int | None = None):
        with wb.store() as store:
            ids = [i for (i,) in store.query(sql_loop.PROPOSALS_ABOVE,
                                             {"threshold": threshold, "cycle": cycle})]
        return {"ids": ids}

    @app.post("/api/decide")
    def decide_(body: DecideBody):
        if not (body.accept or body.reject or body.accept_above is not None):
            raise GraftError("nothing to decide: give accept, reject or accept_above")
        with wb.store(write=True) as store:
            result = decide(store, accept=body.accept, reject=body.reject,
                            accept_above=body.accept_above, cycle=body.cycle,
                            reviewer=body.reviewer, neuron=wb.neuron, token=wb.link_token)
        return {"decided": result.decided, "staked": result.staked}

    @app.get("/api/particle")
    def particle(ref: str, limit: int = 200):
        with wb.store() as store:
            found = [p for (p,) in store.query(sql_loop.PARTICLE_KNOWN, {"ref": ref})]
            if not found:
                found = [p for p, _ in store.query(sql.PROVENANCE_NAMED, {"name": ref})]
            if len(found) != 1:
                if not found:
                    return SafeJSON({"error": f"no particle with id, name or alias {ref!r}"},
                                    status_code=404)
                names = store.names_of(found)
                return {"ambiguous": [{"particle": p, "name": names.get(p)} for p in found]}
            p = found[0]
            row = store.query(sql_loop.PARTICLE_GET, {"particle": p})
            name, aliases, text = row[0] if row else (None, [], None)
            out_degree, in_degree = store.query(sql_loop.PARTICLE_DEGREE, {"particle": p})[0]
            cols = ("seq", "out", "other", "other_name", "neuron", "token", "amount", "valence",
                    "origin", "cycle")
            links = [dict(zip(cols, r)) for r in
                     store.query(sql_loop.PARTICLE_LINKS, {"particle": p, "limit": limit})]
            focus = wb.focus_of(store)
            pending = list_proposals(store, "pending", None, limit, particle=p)
        rank = (1 + sum(v > focus[p] for v in focus.values())) if p in focus else None
        return {"particle": p, "name": name, "aliases": aliases or [], "text": text,
                "focus": focus.get(p), "focus_rank": rank, "particles": len(focus),
                "out_degree": out_degree, "in_degree": in_degree, "links": links,
                "proposals": pending}

    @app.get("/api/why")
    def why(p: str, q: str, top: int = 12):
        from compiler import provenance
        with wb.store() as store:
            folder, reason = wb.model_dir(store)
            if folder is None:
                return {"available": False, "message": reason}
            result = provenance.trace(store, folder, pair=(p, q), top=top)
        return {"available": True, "model": str(folder), "trace": result}

    @app.get("/api/notes")
    def notes():
        """The vaults this store imported, and their notes without links (a new note's
        case): what the new-note view offers to open."""
        from graph import sql_vault
        with wb.store() as store:
            vaults = store.query(sql_vault.VAULTS)
            bare = store.query(sql_vault.NOTES_WITHOUT_LINKS)
        return {"vaults": [{"root": r, "flavor": f} for r, f in vaults],
                "notes": [{"root": r, "source": s, "name": n} for r, s, n in bare]}

    @app.get("/api/note")
    def note(source: str):
        root, flavor = _vault(wb)
        path = _note_path(root, source)
        return {"source": source, "name": path.stem, "flavor": flavor,
                "text": path.read_text(encoding="utf-8") if path.exists() else ""}

    @app.post("/api/suggest")
    def suggest_(body: NoteBody):
        from loop.suggest import suggest
        flavor = _vault(wb, required=False)[1]
        with wb.store() as store:
            return suggest(store, wb.db, body.name, body.text, flavor, top=body.top)

    @app.post("/api/note/accept")
    def note_accept(body: NoteAcceptBody):
        """Accept a suggestion for a note: the note becomes a file of the vault if it is new,
        the vault is re-imported (the note's particle and text), the pair is a proposal
        accepted by the reviewer and staked, and `graft vault apply` writes it into the
        note — at its first mention, else under "Related"."""
        from graph.ingest_rows import import_vault
        from graph.vault_write import apply_vault, atomic_write
        from loop.extract import Proposal
        from loop.review import add_proposals
        from graph import ids
        from graph.vault import normalise_name
        root, flavor = _vault(wb)
        source = (f"pages/{body.name}.md" if flavor == "logseq" else f"{body.name}.md")
        path = _note_path(root, source)
        if path.exists() and path.read_text(encoding="utf-8") != body.text:
            raise GraftError(f"{source} differs from the text here (edited in the vault "
                             "since you opened it?): reopen it, then accept")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, body.text.encode("utf-8"))
        with wb.store(write=True) as store:
            import_vault(store, root, flavor)
            src = ids.particle_of_text(normalise_name(body.name), store.hash_name)
            add_proposals(store, [Proposal(src, body.dst, body.score, body.confidence, 0.0,
                                           0.0, None, None, {"by": "workbench new-note view"})],
                          0, "workbench", None)
            [pid] = [i for (i,) in store.query(sql_loop.PROPOSAL_ID,
                                               {"cycle": 0, "src": src, "dst": body.dst})]
            result = decide(store, accept=[pid], reviewer=body.reviewer, neuron=wb.neuron,
                            token=wb.link_token)
            notes = apply_vault(store, root, flavor, related="Related", only={source})
        written = [how for n in notes for _, how in n.written]
        skipped = [n.skipped for n in notes if n.skipped]
        return {"source": source, "proposal": pid, "staked": result.staked,
                "written": written, "skipped": skipped,
                "text": path.read_text(encoding="utf-8")}

    @app.get("/api/cycles")
    def cycles():
        from loop.cycle import cycle_metrics
        with wb.store() as store:
            rows = cycle_metrics(store)
            folder, reason = wb.model_dir(store)
        return {"cycles": rows, "model": str(folder) if folder else None, "model_reason": reason}

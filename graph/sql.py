"""Every SQL statement graft runs, as named constants; only graph/store.py executes them."""
from graph import sql_loop as _loop
from graph import sql_vault as _vault

# Migrations are applied once, in order, and never edited: a schema change is a new entry.
MIGRATIONS: list[str] = [
    # 1: the store
    """
    CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
    CREATE SEQUENCE batch_ids START 1;
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        kind VARCHAR NOT NULL,            -- links | particles | tokens | vault | extract | curator
        source VARCHAR NOT NULL,          -- the file or folder as given
        digest VARCHAR NOT NULL,          -- BLAKE3 of the input bytes: re-ingesting is a no-op
        rows BIGINT NOT NULL,
        created TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE TABLE particles (
        particle VARCHAR PRIMARY KEY,
        name VARCHAR,
        aliases VARCHAR[],
        text VARCHAR,
        props JSON,                       -- fields of the input row graft does not use
        batch INTEGER NOT NULL
    );
    CREATE TABLE neurons (neuron VARCHAR PRIMARY KEY, batch INTEGER NOT NULL);
    CREATE TABLE tokens (
        id BIGINT PRIMARY KEY,            -- u32 in the .graph record format
        name VARCHAR NOT NULL UNIQUE,
        rho DOUBLE NOT NULL DEFAULT 1,    -- w = amount * rho
        declared BOOLEAN NOT NULL         -- false: first seen in a link, not from a token table
    );
    CREATE TABLE cyberlinks (
        seq BIGINT NOT NULL,              -- append order; a snapshot is every link with seq <= its max_seq
        neuron VARCHAR NOT NULL,
        src VARCHAR NOT NULL,             -- "from" in files
        dst VARCHAR NOT NULL,             -- "to" in files
        token VARCHAR NOT NULL,
        amount HUGEINT,                   -- the stake, exact; NULL only when >= 2^127 ...
        amount_big VARCHAR,               -- ... then its exact decimal digits are here (README)
        valence TINYINT NOT NULL,
        time BIGINT NOT NULL,
        origin VARCHAR NOT NULL,          -- ingest | extract | curator
        cycle INTEGER,
        batch INTEGER NOT NULL
    );
    CREATE TABLE snapshots (
        id VARCHAR PRIMARY KEY,           -- BLAKE3 of the canonical serialisation of its links
        max_seq BIGINT NOT NULL,
        links BIGINT NOT NULL,
        created TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    """,
    # 2: the loop — proposals and the cycle journal (graph/sql_loop.py)
    _loop.MIGRATION,
    # 3: the vault round trip — notes as last read or written, links written into them
    _vault.MIGRATION,
    # 4: the pages without links at each cycle, which tell a new note from an old one
    _loop.LINKLESS_MIGRATION,
]

SCHEMA_VERSION_CREATE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
SCHEMA_VERSION_GET = "SELECT coalesce(max(version), 0) FROM schema_version"
SCHEMA_VERSION_ADD = "INSERT INTO schema_version VALUES (?)"

META_GET = "SELECT value FROM meta WHERE key = ?"
META_SET = "INSERT OR REPLACE INTO meta VALUES (?, ?)"

BATCH_BY_DIGEST = "SELECT id, source FROM batches WHERE digest = ? AND kind = ?"
BATCH_ADD = """
    INSERT INTO batches (id, kind, source, digest, rows) VALUES (nextval('batch_ids'), ?, ?, ?, ?)
    RETURNING id
"""
# The id the next BATCH_ADD will take, without taking it (a rolled-back nextval is gone).
BATCH_ID_NEXT = """
    SELECT coalesce(last_value + increment_by, start_value) FROM duckdb_sequences()
    WHERE sequence_name = 'batch_ids'
"""
MAX_SEQ = "SELECT coalesce(max(seq), 0) FROM cyberlinks"

# A stake of any size, exactly, as text; and as float64 for the matrices.
AMOUNT_TEXT = "coalesce(CAST(amount AS VARCHAR), amount_big)"
AMOUNT_FLOAT = "coalesce(CAST(amount AS DOUBLE), CAST(amount_big AS DOUBLE))"
# Effective stake w of a link `l` (DESIGN §1), and the withdrawal rule: a link of valence 0
# or -1 withdraws its neuron's earlier links on the same (from, to, token) — a neuron's
# latest word on a link wins, so a vault re-import can record a link a curator deleted
# (cyberlinks are append-only). `wd` is the WITHDRAWN join below.
W_OF_L = f"""CASE WHEN l.valence = 1 AND l.seq > coalesce(wd.wseq, -1)
                  THEN {AMOUNT_FLOAT.replace('amount', 'l.amount')} * coalesce(t.rho, 1)
                  ELSE 0 END"""
WITHDRAWN = """LEFT JOIN (SELECT neuron, src, dst, token, max(seq) AS wseq FROM cyberlinks
                          WHERE seq <= $max_seq AND valence <= 0
                          GROUP BY neuron, src, dst, token) wd
               ON wd.neuron = l.neuron AND wd.src = l.src AND wd.dst = l.dst
                  AND wd.token = l.token"""

# -- staging: every field read as text so nothing is lost before validation ----------------
LINK_FIELDS = ("neuron", "from", "to", "token", "amount", "valence", "time")
LINK_OPTIONAL = ("semcon",)

# A file as a relation (row, the link fields, semcon, token_id): staged as a temp table, or
# written straight into cyberlinks. {select} picks the CSV and Parquet fields, as text, or
# (Parquet integer columns on the direct path) as they are; absent optional ones are NULL.
SOURCE_JSONL = """(
    SELECT row_number() OVER () AS row, *, NULL::BIGINT AS token_id
    FROM read_json($path, format = 'newline_delimited', columns = {columns},
                   maximum_object_size = 1073741824))"""
SOURCE_CSV = """(
    SELECT row_number() OVER () AS row, {select}, NULL::BIGINT AS token_id
    FROM read_csv($path, header = true, delim = ',', quote = '"', escape = '"', columns = {columns},
                  auto_detect = false, strict_mode = true))"""
SOURCE_PARQUET = """(
    SELECT file_row_number + 1 AS row, {select}, NULL::BIGINT AS token_id
    FROM read_parquet($path, file_row_number = true))"""
STAGE = "CREATE OR REPLACE TEMP TABLE {stage} AS SELECT * FROM {source}"
STAGE_ARROW = "CREATE OR REPLACE TEMP TABLE {stage} AS SELECT * FROM {view}"
STAGE_SEMCONS = 'SELECT row, "from", "to", semcon FROM {stage} WHERE semcon IS NOT NULL ORDER BY row'

DROP_TEMP = "DROP TABLE IF EXISTS {stage}"

# Particle ids repeat (a million links name a few hundred thousand particles), so their
# pattern is checked once per distinct id before the write; LINK_BAD checks the rest of a
# row inside the INSERT. LINK_CHECKS then names every bad value. Regexes mirror graph/ids.py.
# UNION ALL + GROUP BY, not UNION: DuckDB 2.0's UNION takes 1.2 s for 2M ids, this 0.2 s.
BAD_IDS = """
    SELECT count(*) FROM (SELECT p FROM (SELECT "from" AS p FROM {stage}
                                         UNION ALL SELECT "to" FROM {stage}) GROUP BY p)
    WHERE p IS NOT NULL AND NOT regexp_full_match(p, $pre)
"""
ROW_BAD = """neuron IS NULL OR trim(neuron) = ''
       OR "from" IS NULL OR "to" IS NULL
       OR token IS NULL OR trim(token) = ''
       OR ($strict AND token NOT IN (SELECT name FROM tokens))"""
# The numeric fields have a test on text (every format) and one on an integer column (typed
# Parquet). Both accept exactly the same values: text [0-9]+ is an integer >= 0, and
# [0-9]{1,18} one in [0, 10^18).
FIELD_BAD = {
    "text": {"amount": "amount IS NULL OR NOT regexp_full_match(amount, '[0-9]+')",
             "valence": "valence IS NULL OR valence NOT IN ('-1', '0', '1')",
             "time": "time IS NULL OR NOT regexp_full_match(time, '[0-9]{1,18}')"},
    "integer": {"amount": "amount IS NULL OR amount < 0",
                "valence": "valence IS NULL OR valence NOT IN (-1, 0, 1)",
                "time": "time IS NULL OR time NOT BETWEEN 0 AND 999999999999999999"},
}
SEMCON_BAD = "(semcon IS NOT NULL AND trim(semcon) = '')"
# The direct write has no stage to read label links from, so any semcon sends the command
# down the staged path (a JSONL key can hide as "sem\u0063on": only the reader can tell).
SEMCON_DIRECT = "semcon IS NOT NULL"
NUMERIC_FIELDS = ("amount", "valence", "time")


def link_bad(kinds: dict[str, str], semcon: str = SEMCON_BAD) -> str:
    """The row test of INSERT_LINKS, given each numeric field's kind: 'text' or 'integer'."""
    fields = " OR ".join(FIELD_BAD[kinds[f]][f] for f in NUMERIC_FIELDS)
    return f"({ROW_BAD} OR {fields} OR {semcon})"


LINK_BAD = link_bad(dict.fromkeys(NUMERIC_FIELDS, "text"))
# One row per bad value: (row, field, value, expected). Regexes mirror graph/ids.py.
LINK_CHECKS = """
    SELECT row, field, value, expected FROM (
        SELECT row, 'neuron' AS field, neuron AS value, 'a non-empty string' AS expected
          FROM {stage} WHERE neuron IS NULL OR trim(neuron) = ''
        UNION ALL
        SELECT row, 'from', "from", $pexp FROM {stage}
          WHERE "from" IS NULL OR NOT regexp_full_match("from", $pre)
        UNION ALL
        SELECT row, 'to', "to", $pexp FROM {stage}
          WHERE "to" IS NULL OR NOT regexp_full_match("to", $pre)
        UNION ALL
        SELECT row, 'token', token, 'a non-empty token name' FROM {stage}
          WHERE token IS NULL OR trim(token) = ''
        UNION ALL
        SELECT row, 'token', token, 'a token in the store''s token table (' || $tokens || ')'
          FROM {stage} WHERE $strict AND token IS NOT NULL AND trim(token) <> ''
                         AND token NOT IN (SELECT name FROM tokens)
        UNION ALL
        SELECT row, 'amount', amount,
               CASE WHEN regexp_full_match(amount, '-[0-9]+') THEN 'a non-negative amount (stake cannot be negative)'
                    ELSE 'a non-negative integer' END
          FROM {stage} WHERE amount IS NULL OR NOT regexp_full_match(amount, '[0-9]+')
        UNION ALL
        SELECT row, 'valence', valence, 'one of -1, 0, 1' FROM {stage}
          WHERE valence IS NULL OR valence NOT IN ('-1', '0', '1')
        UNION ALL
        SELECT row, 'time', time, 'a non-negative integer below 2^63 (block height or unix time)'
          FROM {stage} WHERE time IS NULL OR NOT regexp_full_match(time, '[0-9]{{1,18}}')
        UNION ALL
        SELECT row, 'semcon', semcon, 'a particle id or a semcon name' FROM {stage}
          WHERE semcon IS NOT NULL AND trim(semcon) = ''
    )
    ORDER BY row, field
"""

# -- writing ---------------------------------------------------------------------------
# Validation runs inside the insert (one pass over the data): the first bad row raises,
# the transaction rolls back, and LINK_CHECKS then lists every problem.
INVALID_ROW = "graft: invalid link row"
# Text amounts become HUGEINT when they fit (below 2^127; DuckDB casts UHUGEINT to text
# ~100x slower than HUGEINT, which the snapshot hash needs) and stay
# exact digits in amount_big when they do not.
_AMOUNT_COLUMNS = """TRY_CAST(amount AS HUGEINT) AS amount_n,
       CASE WHEN TRY_CAST(amount AS HUGEINT) IS NULL
            THEN coalesce(nullif(ltrim(amount, '0'), ''), '0') END AS amount_big"""
# An integer column holds no amount >= 2^127 (Parquet integers are 64-bit at most).
AMOUNT_COLUMNS = {"text": _AMOUNT_COLUMNS,
                  "integer": "CAST(amount AS HUGEINT) AS amount_n, NULL::VARCHAR AS amount_big"}
# {source}: a staged table or a SOURCE_*; {amount}: AMOUNT_COLUMNS; {bad}: LINK_BAD or the
# direct path's row test. Returns the number of rows written.
INSERT_LINKS = f"""
    INSERT INTO cyberlinks
    SELECT $base + row, neuron, "from", "to", token, amount_n, amount_big,
           CAST(valence AS TINYINT), CAST(time AS BIGINT), $origin, $cycle, $batch
    FROM (SELECT *, {{amount}} FROM {{source}})
    WHERE CASE WHEN {{bad}} THEN error('{INVALID_ROW} ' || row) ELSE true END
"""
# A link row's optional semcon writes the label link semcon -> axon(from, to), same stake.
INSERT_LABELS = f"""
    INSERT INTO cyberlinks
    SELECT $base + s.row, s.neuron, l.semcon_id, l.axon, s.token, s.amount_n, s.amount_big,
           CAST(s.valence AS TINYINT), CAST(s.time AS BIGINT), $origin, $cycle, $batch
    FROM (SELECT *, {_AMOUNT_COLUMNS} FROM {{stage}}) s
    JOIN label_view l USING (row)
"""
INSERT_NAMED_PARTICLES = """
    INSERT INTO particles (particle, name, aliases, text, props, batch)
    SELECT particle, name, [], NULL, NULL, $batch FROM name_view
    WHERE particle NOT IN (SELECT particle FROM particles)
"""
# The ids and tokens of links already written, shaped as a stage for BAD_IDS and
# INSERT_NEW_TOKENS (the direct path has no stage).
WRITTEN_IDS = '(SELECT src AS "from", dst AS "to" FROM cyberlinks WHERE seq > $since)'
WRITTEN_TOKENS = "(SELECT token, NULL::BIGINT AS token_id FROM cyberlinks WHERE batch = $batch)"
INSERT_NEURONS = """
    INSERT INTO neurons SELECT DISTINCT neuron, $batch FROM cyberlinks
    WHERE batch = $batch AND neuron NOT IN (SELECT neuron FROM neurons)
"""
# New token names get the next free ids, unless the input (.graph) names the id itself.
INSERT_NEW_TOKENS = """
    INSERT INTO tokens
    SELECT coalesce(token_id,
                    greatest((SELECT coalesce(max(id) + 1, 0) FROM tokens),
                             (SELECT coalesce(max(token_id) + 1, 0) FROM {stage}))
                    + row_number() OVER (ORDER BY token_id NULLS FIRST, name) - 1),
           name, 1, false
    FROM (SELECT token AS name, any_value(token_id) AS token_id FROM {stage}
          WHERE token NOT IN (SELECT name FROM tokens) GROUP BY token)
"""

UPSERT_PARTICLES = """
    INSERT OR REPLACE INTO particles
    SELECT particle, name, aliases, text, CAST(props AS JSON), $batch FROM particle_view
"""
UPSERT_TOKENS = """
    INSERT INTO tokens
    SELECT coalesce(v.id, t.id,
                    (SELECT coalesce(max(id) + 1, 0) FROM tokens)
                    + row_number() OVER (PARTITION BY v.id IS NULL AND t.id IS NULL ORDER BY v.name) - 1),
           v.name, v.rho, true
    FROM token_view v LEFT JOIN tokens t ON t.name = v.name
    ON CONFLICT (name) DO UPDATE SET rho = excluded.rho, declared = true
"""
# A declared id must not belong to another token, nor differ from the id a token already has.
TOKEN_ID_CLASH = """
    SELECT v.name, t.name, v.id FROM token_view v JOIN tokens t
      ON (t.id = v.id AND t.name <> v.name) OR (t.name = v.name AND t.id <> v.id)
"""

# -- snapshots ---------------------------------------------------------------------------
# Canonical order: chronological, then by content. It fixes both the snapshot hash and the
# first-appearance order of particles, so two stores holding the same links agree on both.
CANONICAL_ORDER = "time, src, dst, neuron, token, valence, amount, amount_big"
SNAPSHOT_CANONICAL = f"""
    SELECT concat_ws(chr(9), time, src, dst, neuron, token, valence, {AMOUNT_TEXT}) || chr(10) AS line
    FROM cyberlinks WHERE seq <= $max_seq ORDER BY {CANONICAL_ORDER}
"""
SNAPSHOT_ADD = "INSERT INTO snapshots (id, max_seq, links) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
SNAPSHOT_GET = "SELECT id, max_seq, links, CAST(created AS VARCHAR) FROM snapshots WHERE id LIKE ? || '%'"
SNAPSHOT_LATEST = """
    SELECT id, max_seq, links, CAST(created AS VARCHAR) FROM snapshots ORDER BY max_seq DESC, created DESC LIMIT 1
"""
SNAPSHOT_BY_SEQ = "SELECT id, max_seq, links, CAST(created AS VARCHAR) FROM snapshots WHERE max_seq = ?"
SNAPSHOT_LIST = "SELECT id, max_seq, links, CAST(created AS VARCHAR) FROM snapshots ORDER BY max_seq"
LINK_COUNT_UPTO = "SELECT count(*) FROM cyberlinks WHERE seq <= ?"

# Every link of a snapshot in canonical order, with its effective stake w = amount·ρ when
# valence is +1, else 0 (negative valence is clipped, DESIGN §1). `axon` is computed here
# for sha256 stores with hex ids (vectorised); other ids get it in Python.
SNAPSHOT_LINKS = f"""
    SELECT l.seq, l.neuron, l.src, l.dst, l.token, {AMOUNT_TEXT.replace('amount', 'l.amount')} AS amount,
           {W_OF_L} AS w,
           l.valence, l.time, l.origin,
           CASE WHEN $sha256 AND length(l.src) = 64 AND length(l.dst) = 64
                     AND regexp_full_match(l.src || l.dst, '[0-9a-f]+')
                THEN lower(sha256(unhex(l.src) || unhex(l.dst))) END AS axon
    FROM cyberlinks l LEFT JOIN tokens t ON t.name = l.token {WITHDRAWN}
    WHERE l.seq <= $max_seq
    ORDER BY l.time, l.src, l.dst, l.neuron, l.token, l.valence, l.amount, l.amount_big
"""

# What the compiler reads of a snapshot, for its vocab and semcons passes at once: each
# link's ends, w and axon as in SNAPSHOT_LINKS, canonical order, without the columns only
# exports need. The axon hash is most of the cost, so it runs once. Valid ids of length 64
# are hex (see ALL_HEX_IDS), so the length test alone guards unhex.
SNAPSHOT_TYPED_EDGES = f"""
    SELECT l.src, l.dst,
           {W_OF_L} AS w,
           CASE WHEN $sha256 AND length(l.src) = 64 AND length(l.dst) = 64
                THEN lower(sha256(unhex(l.src) || unhex(l.dst))) END AS axon
    FROM cyberlinks l LEFT JOIN tokens t ON t.name = l.token {WITHDRAWN}
    WHERE l.seq <= $max_seq
    ORDER BY l.time, l.src, l.dst, l.neuron, l.token, l.valence, l.amount, l.amount_big
"""

# -- stats ---------------------------------------------------------------------------------
STATS_COUNTS = """
    SELECT
      (SELECT count(*) FROM (SELECT particle FROM particles UNION SELECT src FROM cyberlinks
                             UNION SELECT dst FROM cyberlinks)) AS particles,
      (SELECT count(*) FROM cyberlinks) AS links,
      (SELECT count(DISTINCT neuron) FROM cyberlinks) AS neurons,
      (SELECT count(*) FROM tokens) AS tokens,
      (SELECT count(*) FROM batches) AS batches,
      (SELECT count(*) FROM snapshots) AS snapshots,
      (SELECT count(*) FROM particles WHERE text IS NOT NULL AND text <> '') AS particles_with_text
"""
NAMES_OF = "SELECT particle, name FROM particles WHERE particle IN (SELECT particle FROM id_view)"
ALIASES_OF = """
    SELECT particle, aliases FROM particles
    WHERE particle IN (SELECT particle FROM id_view) AND len(aliases) > 0
"""

# -- evaluation (loop/evaluate.py) --------------------------------------------------------
# Every particle a held-out target may be, with what the unlinked-mention baseline reads.
EVAL_PARTICLES = "SELECT particle, name, aliases, text FROM particles ORDER BY particle"

# -- export --------------------------------------------------------------------------------
EXPORT_LINKS = f"""
    SELECT l.neuron, l.src AS "from", l.dst AS "to", l.token, t.id AS token_id,
           {AMOUNT_TEXT.replace('amount', 'l.amount')} AS amount, l.valence, l.time
    FROM cyberlinks l LEFT JOIN tokens t ON t.name = l.token
    WHERE l.seq <= $max_seq
    ORDER BY l.time, l.src, l.dst, l.neuron, l.token, l.valence, l.amount, l.amount_big
"""

# The adjacency needs only (src, dst, w) of non-label links, in canonical order. For sha256
# stores with hex ids the label test runs here; otherwise snapshot_links() does it in Python.
SNAPSHOT_EDGES = f"""
    WITH l AS (
        SELECT l.src, l.dst, l.time, l.neuron, l.token, l.valence, l.amount, l.amount_big,
               {W_OF_L} AS w
        FROM cyberlinks l LEFT JOIN tokens t ON t.name = l.token {WITHDRAWN}
        WHERE l.seq <= $max_seq
    ),
    axons AS (SELECT DISTINCT lower(sha256(unhex(src) || unhex(dst))) AS axon FROM l)
    SELECT src, dst, w FROM l
    WHERE dst NOT IN (SELECT axon FROM axons)
    ORDER BY time, src, dst, neuron, token, valence, amount, amount_big
"""
# Valid ids of length 64 are hex (CIDs are 46 or 59 chars), so a length test is enough.
ALL_HEX_IDS = """
    SELECT count(*) = 0 FROM cyberlinks WHERE seq <= ? AND (length(src) <> 64 OR length(dst) <> 64)
"""

# -- provenance
# The records behind rows of M, for compiler/provenance.py: every link of a snapshot whose
# source (or target) is in id_view, with the effective stake w exactly as SNAPSHOT_LINKS
# computes it. Label links are not told apart here: the caller keeps records whose other
# end is in the checkpoint's vocabulary (an axon is not, unless a content link starts
# from it: such a graph would be misread here, and shows as a large residual).
_PROVENANCE_LINKS = f"""
    SELECT l.seq, l.neuron, l.src, l.dst, l.token, {AMOUNT_TEXT.replace('amount', 'l.amount')} AS amount,
           {W_OF_L} AS w
    FROM cyberlinks l LEFT JOIN tokens t ON t.name = l.token {WITHDRAWN}
    WHERE l.seq <= $max_seq AND {{where}}
    ORDER BY l.seq
"""
PROVENANCE_FROM = _PROVENANCE_LINKS.format(where="l.src IN (SELECT particle FROM id_view)")
PROVENANCE_TO = _PROVENANCE_LINKS.format(where="l.dst IN (SELECT particle FROM id_view)")
PROVENANCE_SEQ = _PROVENANCE_LINKS.format(where="l.seq = $seq")
# Particles a name or alias may refer to (case-insensitive), for `graft trace P Q`.
PROVENANCE_NAMED = """
    SELECT particle, name FROM particles
    WHERE lower(name) = lower($name)
       OR list_contains(list_transform(coalesce(aliases, []), lambda a: lower(a)), lower($name))
    ORDER BY particle
"""

# -- vault re-import (graph/vault_write.py; the rest is in graph/sql_vault.py)
# The links a neuron's import holds now from some notes (id_view): withdrawn ones left out
# (graph/sql.py WITHDRAWN), amounts summed per (from, to, token).
LINKS_NOW_FROM = f"""
    SELECT l.src, l.dst, l.token, sum(CAST(l.amount AS HUGEINT))
    FROM cyberlinks l {WITHDRAWN}
    WHERE l.seq <= $max_seq AND l.neuron = $neuron AND l.valence = 1
      AND l.seq > coalesce(wd.wseq, -1) AND l.src IN (SELECT particle FROM id_view)
    GROUP BY l.src, l.dst, l.token ORDER BY l.src, l.dst, l.token
"""
KNOWN_PARTICLES = "SELECT particle FROM particles WHERE particle IN (SELECT particle FROM id_view)"

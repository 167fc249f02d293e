"""The loop's SQL: proposals (extract → review → stake) and the cycle journal. Kept apart
from graph/sql.py for size; graph/sql.py appends MIGRATION to its migrations, and only
graph/store.py executes any of it."""

MIGRATION = """
    CREATE SEQUENCE proposal_ids START 1;
    CREATE TABLE proposals (
        id INTEGER PRIMARY KEY,
        cycle INTEGER NOT NULL,           -- the cycle that proposed it (0: by hand)
        src VARCHAR NOT NULL,
        dst VARCHAR NOT NULL,
        score DOUBLE NOT NULL,            -- the extractor's ranking score
        confidence DOUBLE NOT NULL,       -- in [0, 1]; the stake is proportional to it
        tuned DOUBLE,                     -- log P(dst | src), tuned model
        compiled DOUBLE,                  -- log P(dst | src), compiled model
        head INTEGER,                     -- the head whose tuning moved the score most
        semcon VARCHAR,                   -- that head's semcon (a particle id)
        evidence JSON,                    -- per-head deltas, corpus lines where both occur
        model VARCHAR NOT NULL,           -- the checkpoint and adapter it came from
        adapter VARCHAR,
        status VARCHAR NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'accepted', 'rejected')),
        reviewer VARCHAR,
        decided TIMESTAMP,
        staked BIGINT,                    -- seq of the cyberlink an accepted proposal became
        created TIMESTAMP NOT NULL DEFAULT current_timestamp,
        UNIQUE (cycle, src, dst)
    );
    CREATE TABLE cycle_steps (
        cycle INTEGER NOT NULL,
        step VARCHAR NOT NULL,            -- snapshot | compile | tune | extract | review | stake
        detail JSON NOT NULL,             -- what the step made and measured
        finished TIMESTAMP NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (cycle, step)
    );
"""

# A re-run of the same cycle proposes the same pairs again: kept once.
PROPOSALS_ADD = """
    INSERT INTO proposals (id, cycle, src, dst, score, confidence, tuned, compiled, head, semcon,
                           evidence, model, adapter)
    SELECT nextval('proposal_ids'), $cycle, src, dst, score, confidence, tuned, compiled, head,
           semcon, CAST(evidence AS JSON), $model, $adapter
    FROM proposal_view p
    WHERE NOT EXISTS (SELECT 1 FROM proposals q
                      WHERE q.cycle = $cycle AND q.src = p.src AND q.dst = p.dst)
    ORDER BY score DESC, src, dst
"""
PROPOSALS_COUNT = "SELECT count(*) FROM proposals"
ACCEPTED_UNSTAKED = "SELECT count(*) FROM proposals WHERE status = 'accepted' AND staked IS NULL"
PROPOSALS_LIST = """
    SELECT p.id, p.cycle, p.src, coalesce(a.name, p.src) AS src_name, p.dst,
           coalesce(b.name, p.dst) AS dst_name, p.score, p.confidence, p.semcon, p.status,
           p.reviewer, CAST(p.evidence AS VARCHAR) AS evidence
    FROM proposals p
    LEFT JOIN particles a ON a.particle = p.src
    LEFT JOIN particles b ON b.particle = p.dst
    WHERE ($status IS NULL OR p.status = $status) AND ($cycle IS NULL OR p.cycle = $cycle)
      AND ($particle IS NULL OR p.src = $particle OR p.dst = $particle)
    ORDER BY p.confidence DESC, p.score DESC, p.id
    LIMIT $limit
"""
PROPOSALS_ABOVE = """
    SELECT id FROM proposals WHERE status = 'pending' AND score >= $threshold
    AND ($cycle IS NULL OR cycle = $cycle) ORDER BY id
"""
PROPOSALS_BY_CONFIDENCE = """
    SELECT id, confidence FROM proposals WHERE status = 'pending'
    AND ($cycle IS NULL OR cycle = $cycle) ORDER BY confidence DESC, score DESC, id
"""
# pending proposals with the fold's estimate each got (before any curator correction)
PENDING_FOLD_CONFIDENCE = """
    SELECT id, TRY_CAST(json_extract(evidence, '$.fold_confidence') AS DOUBLE), confidence, score,
           cycle
    FROM proposals WHERE status = 'pending' AND ($cycle IS NULL OR cycle = $cycle)
"""
PROPOSALS_SET_CONFIDENCE = """
    UPDATE proposals SET confidence = conf_view.confidence FROM conf_view
    WHERE proposals.id = conf_view.id AND proposals.status = 'pending'
"""
PROPOSAL_ID = "SELECT id FROM proposals WHERE cycle = $cycle AND src = $src AND dst = $dst"
PROPOSALS_UNKNOWN = "SELECT id FROM id_view WHERE id NOT IN (SELECT id FROM proposals) ORDER BY id"
PROPOSALS_DECIDE = """
    UPDATE proposals SET status = $status, reviewer = $reviewer, decided = current_timestamp
    WHERE id IN (SELECT id FROM id_view) AND status = 'pending'
    RETURNING id
"""
# Accepted and not yet staked: the cyberlinks they become (one per proposal, in id order).
STAKE_ACCEPTED = """
    INSERT INTO cyberlinks
    SELECT $base + row_number() OVER (ORDER BY id), $neuron, src, dst, $token,
           CAST(greatest(1, round(confidence * $scale)) AS HUGEINT), NULL, 1, $time,
           'extract', cycle, $batch
    FROM proposals WHERE status = 'accepted' AND staked IS NULL
"""
LATEST_LINK_TIME = "SELECT coalesce(max(time), 0) FROM cyberlinks"
# An accepted proposal holds confidence × what a typical ground-truth link holds: the median
# amount of the store's positive ingest/curator links (1 when there are none).
TRUTH_MEDIAN_AMOUNT = """
    SELECT coalesce(median(CAST(amount AS DOUBLE)), 1) FROM cyberlinks
    WHERE origin IN ('ingest', 'curator') AND valence = 1 AND amount IS NOT NULL
"""
MARK_STAKED = """
    UPDATE proposals SET staked = l.seq
    FROM cyberlinks l
    WHERE l.batch = $batch AND l.src = proposals.src AND l.dst = proposals.dst
      AND proposals.status = 'accepted' AND proposals.staked IS NULL
"""
ENSURE_TOKEN = """
    INSERT INTO tokens SELECT (SELECT coalesce(max(id) + 1, 0) FROM tokens), $token, 1, false
    WHERE NOT EXISTS (SELECT 1 FROM tokens WHERE name = $token)
"""
DECISIONS_OF = """
    SELECT coalesce(a.name, p.src), coalesce(b.name, p.dst), p.status
    FROM proposals p
    LEFT JOIN particles a ON a.particle = p.src
    LEFT JOIN particles b ON b.particle = p.dst
    WHERE p.status <> 'pending' ORDER BY p.id
"""
LINKED_PAIRS = "SELECT DISTINCT src, dst FROM cyberlinks WHERE valence >= 0"
REJECTED_PAIRS = "SELECT DISTINCT src, dst FROM proposals WHERE status = 'rejected'"
# What people decided (the loop's own acceptances, reviewer 'auto', are not labels).
CURATOR_DECISIONS = """
    SELECT DISTINCT src, dst, status FROM proposals
    WHERE status <> 'pending' AND coalesce(reviewer, '') <> 'auto' ORDER BY src, dst
"""
# Ground-truth targets of some sources (Store.of_ids): a rejected proposal's DPO "chosen".
TRUTH_OF_SOURCES = """
    SELECT DISTINCT l.src, l.dst FROM cyberlinks l JOIN id_view s ON l.src = s.particle
    WHERE l.origin IN ('ingest', 'curator') AND l.valence >= 0 ORDER BY l.src, l.dst
"""
# Per cycle: proposals people decided, how many they accepted, their mean confidence.
CYCLE_CURATOR = """
    SELECT cycle, count(*), count(*) FILTER (WHERE status = 'accepted'), avg(confidence)
    FROM proposals WHERE status <> 'pending' AND coalesce(reviewer, '') <> 'auto'
    GROUP BY cycle ORDER BY cycle
"""
CURATOR_LABELS = """
    SELECT coalesce(TRY_CAST(json_extract(evidence, '$.fold_confidence') AS DOUBLE), confidence),
           CASE WHEN status = 'accepted' THEN 1 ELSE 0 END
    FROM proposals WHERE status <> 'pending' AND coalesce(reviewer, '') <> 'auto'
    AND ($cycle IS NULL OR cycle = $cycle) ORDER BY id
"""
# Pairs linked by the loop (origin extract): never candidates of a fit, like the extractor's.
PREDICTED_PAIRS = "SELECT DISTINCT src, dst FROM cyberlinks WHERE origin = 'extract' AND valence >= 0"

CYCLE_TOP = """
    SELECT id FROM proposals WHERE cycle = $cycle ORDER BY confidence DESC, score DESC, id
    LIMIT $k
"""
CYCLE_ACCEPTED = "SELECT src, dst FROM proposals WHERE cycle = $cycle AND status = 'accepted'"
CYCLE_ACCEPTED_CONFIDENCE = """
    SELECT src, dst, confidence FROM proposals WHERE cycle = $cycle AND status = 'accepted'
"""

STEP_DONE = "SELECT CAST(detail AS VARCHAR) FROM cycle_steps WHERE cycle = $cycle AND step = $step"
STEP_FORGET = "DELETE FROM cycle_steps WHERE cycle = $cycle AND step = $step"
STEP_RECORD = """
    INSERT INTO cycle_steps (cycle, step, detail) VALUES ($cycle, $step, CAST($detail AS JSON))
"""
# Pages with text and no link at a cycle's snapshot (loop/cycle.py new_pages): a page
# without links that was not one at the previous cycle is a new note, not yet linked.
LINKLESS_MIGRATION = """
    CREATE TABLE cycle_linkless (
        cycle INTEGER NOT NULL,
        particle VARCHAR NOT NULL,
        PRIMARY KEY (cycle, particle)
    );
"""
LINKLESS_FORGET = "DELETE FROM cycle_linkless WHERE cycle = $cycle"
LINKLESS_ADD = "INSERT INTO cycle_linkless SELECT $cycle, particle FROM linkless_view"
LINKLESS_NEW = """
    SELECT particle FROM cycle_linkless WHERE cycle = $cycle
    EXCEPT SELECT particle FROM cycle_linkless WHERE cycle = $cycle - 1
    ORDER BY particle
"""
STEPS_ALL = """
    SELECT cycle, step, CAST(detail AS VARCHAR), CAST(finished AS VARCHAR) FROM cycle_steps
    ORDER BY cycle, finished
"""

# -- the ranker's fold: a scratch store with a share of the ground-truth links hidden ----------
# Fixed table names (never values) in copy order: batches first, links last.
FOLD_TABLES = ("batches", "particles", "neurons", "tokens", "cyberlinks")
FOLD_READ = {t: f"SELECT * FROM {t}" for t in FOLD_TABLES}
FOLD_WRITE = {t: f"INSERT INTO {t} SELECT * FROM fold_view" for t in FOLD_TABLES}

# The curator workbench (loop/serve.py): reads only; its decisions go through PROPOSALS_DECIDE.
PROPOSALS_BY_STATUS = "SELECT status, count(*) FROM proposals GROUP BY status ORDER BY status"
# A particle by exact id: a row of particles, or only an end of some link.
PARTICLE_KNOWN = """
    SELECT particle FROM particles WHERE particle = $ref
    UNION SELECT src FROM cyberlinks WHERE src = $ref
    UNION SELECT dst FROM cyberlinks WHERE dst = $ref
"""
PARTICLE_GET = "SELECT name, aliases, text FROM particles WHERE particle = $particle"
PARTICLE_DEGREE = """
    SELECT count(*) FILTER (WHERE src = $particle), count(*) FILTER (WHERE dst = $particle)
    FROM cyberlinks WHERE src = $particle OR dst = $particle
"""
# Newest first; `other` is the far end, `out` whether the link leaves the particle.
PARTICLE_LINKS = """
    SELECT l.seq, l.src = $particle AS out,
           CASE WHEN l.src = $particle THEN l.dst ELSE l.src END AS other, o.name AS other_name,
           l.neuron, l.token, coalesce(CAST(l.amount AS VARCHAR), l.amount_big) AS amount,
           l.valence, l.origin, l.cycle
    FROM cyberlinks l
    LEFT JOIN particles o ON o.particle = CASE WHEN l.src = $particle THEN l.dst ELSE l.src END
    WHERE l.src = $particle OR l.dst = $particle
    ORDER BY l.seq DESC
    LIMIT $limit
"""

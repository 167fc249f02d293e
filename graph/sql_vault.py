"""SQL of the vault round trip (graph/vault_write.py): what each note held when graft last
read or wrote it, and which accepted proposals went into which note."""

MIGRATION = """
    CREATE TABLE vault_notes (
        root VARCHAR NOT NULL,            -- the vault folder, resolved
        flavor VARCHAR NOT NULL,          -- obsidian | logseq
        source VARCHAR NOT NULL,          -- the note's path inside it (POSIX)
        particle VARCHAR NOT NULL,        -- the page it is
        sha256 VARCHAR NOT NULL,          -- its bytes when last imported
        written VARCHAR,                  -- its bytes when graft last wrote it, if since
        PRIMARY KEY (root, source)
    );
    CREATE TABLE vault_writes (
        proposal INTEGER NOT NULL,        -- the accepted proposal written into the note
        root VARCHAR NOT NULL,
        source VARCHAR NOT NULL,
        how VARCHAR NOT NULL CHECK (how IN ('mention', 'related')),
        written TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
"""

NOTE_IMPORTED = """
    INSERT OR REPLACE INTO vault_notes (root, flavor, source, particle, sha256, written)
    VALUES ($root, $flavor, $source, $particle, $sha256, NULL)
"""
NOTE_WRITTEN = """
    UPDATE vault_notes SET written = $sha256 WHERE root = $root AND source = $source
"""
VAULTS = "SELECT DISTINCT root, flavor FROM vault_notes ORDER BY root"
NOTES_OF = """
    SELECT source, particle, sha256, written FROM vault_notes WHERE root = $root ORDER BY source
"""
# Accepted, staked proposals whose source is a note of the vault, with what names the target.
ACCEPTED_FOR = """
    SELECT p.id, n.source, p.dst, coalesce(t.name, p.dst), coalesce(t.aliases, []),
           json_extract_string(t.props, '$.title'), json_extract_string(t.props, '$.source')
    FROM proposals p
    JOIN vault_notes n ON n.particle = p.src AND n.root = $root
    LEFT JOIN particles t ON t.particle = p.dst
    WHERE p.status = 'accepted' AND p.staked IS NOT NULL
    ORDER BY n.source, p.confidence DESC, p.id
"""
WRITE_RECORD = """
    INSERT INTO vault_writes (proposal, root, source, how) VALUES ($proposal, $root, $source, $how)
"""
WRITES_OF_PAIR = """
    SELECT w.proposal, w.source, w.how, w.written FROM vault_writes w
    JOIN proposals p ON p.id = w.proposal
    WHERE p.src = $src AND p.dst = $dst ORDER BY w.written
"""
# The proposals behind a pair, with who decided them and the notes they were written into.
PROPOSALS_OF_PAIR = """
    SELECT p.id, p.cycle, p.status, p.reviewer, p.confidence, p.staked,
           CAST(p.decided AS VARCHAR), CAST(p.evidence AS VARCHAR),
           (SELECT string_agg(w.source || ' (' || w.how || ')', ', ') FROM vault_writes w
            WHERE w.proposal = p.id) AS notes
    FROM proposals p WHERE p.src = $src AND p.dst = $dst AND p.status <> 'pending'
    ORDER BY p.id
"""
NOTES_WITHOUT_LINKS = """
    SELECT n.root, n.source, coalesce(p.name, n.source) FROM vault_notes n
    LEFT JOIN particles p ON p.particle = n.particle
    WHERE NOT EXISTS (SELECT 1 FROM cyberlinks l WHERE l.src = n.particle AND l.valence = 1)
    ORDER BY n.root, n.source
"""

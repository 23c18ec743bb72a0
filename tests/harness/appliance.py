# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: sar-backup engineers
"""A sample STARFACE-like appliance in a scratch directory, for integration
tests and `make demo`.

    from harness.postgres import PostgresCluster
    from harness import appliance

    with PostgresCluster() as pg:
        profile = appliance.build_appliance("/tmp/x/appliance", pg)
        # profile: the `profile` setting (store.py shape) pointing at it all
        appliance.add_rows(pg, "cdr", 5)            # change data after a backup
        appliance.table_rows(pg, "cdr")             # compare contents

What it builds:

- database `asterisk` (owned by the cluster's password-protected test role) in
  schema public: core tables `users`, `groups`, `group_members`,
  `phone_numbers`, `number_assignments`, `chat_history`, and the CDR tables
  `cdr`, `cdr_summary` (a few hundred rows, text with quotes, umlauts and line
  breaks, some bytea). No foreign key crosses between core and CDR tables, so
  each category's dump restores on its own — as on the appliance.
- file trees under `root_dir`, at the appliance's own paths:
  `etc/asterisk/*.conf`, `var/lib/starface/config/...`,
  `var/spool/asterisk/voicemail/default/<ext>/INBOX/msgNNNN.{wav,txt}`,
  `var/lib/starface/announcements/*.wav` (random bytes, deterministic per seed).

The returned profile has the same categories and table patterns as
`store.DEFAULT_PROFILE` (a test keeps them in step); only the paths are moved
under `root_dir` and the database points at the test cluster.

Nothing here imports the collection: the demo can use it from any checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct

DATABASE = "asterisk"
CORE_TABLES = ("chat_history", "group_members", "groups", "number_assignments", "phone_numbers", "users")
CDR_TABLES = ("cdr", "cdr_summary")
EXTENSIONS = ("100", "101", "102", "110", "200")

# Same mapping as store.DEFAULT_PROFILE, paths relative to the appliance root.
CATEGORY_LAYOUT = {
    "core": {"tables": [], "exclude_tables": ["public.cdr*"], "paths": ["etc/asterisk", "var/lib/starface/config"]},
    "cdr_voicemail": {"tables": ["public.cdr*"], "exclude_tables": [], "paths": ["var/spool/asterisk/voicemail"]},
    "announcements": {"tables": [], "exclude_tables": [], "paths": ["var/lib/starface/announcements"]},
}

SCHEMA_SQL = r"""
SET ROLE %(role)s;
CREATE TABLE users (
    id serial PRIMARY KEY,
    login text NOT NULL UNIQUE,
    display_name text NOT NULL,
    email text,
    language text NOT NULL DEFAULT 'de',
    avatar bytea,
    created timestamptz NOT NULL
);
CREATE TABLE groups (
    id serial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    description text
);
CREATE TABLE group_members (
    group_id integer NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE TABLE phone_numbers (
    id serial PRIMARY KEY,
    number text NOT NULL UNIQUE,
    kind text NOT NULL CHECK (kind IN ('internal', 'external', 'fax'))
);
CREATE TABLE number_assignments (
    number_id integer PRIMARY KEY REFERENCES phone_numbers(id) ON DELETE CASCADE,
    user_id integer REFERENCES users(id) ON DELETE SET NULL,
    group_id integer REFERENCES groups(id) ON DELETE SET NULL
);
CREATE TABLE chat_history (
    id bigserial PRIMARY KEY,
    sender_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    recipient_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    sent_at timestamptz NOT NULL,
    body text NOT NULL
);
CREATE INDEX chat_history_sent_at ON chat_history (sent_at);
CREATE TABLE cdr (
    id bigserial PRIMARY KEY,
    call_start timestamptz NOT NULL,
    src text NOT NULL,
    dst text NOT NULL,
    duration integer NOT NULL,
    billsec integer NOT NULL,
    disposition text NOT NULL,
    uniqueid text NOT NULL UNIQUE,
    recording bytea
);
CREATE INDEX cdr_call_start ON cdr (call_start);
CREATE TABLE cdr_summary (
    day date PRIMARY KEY,
    calls integer NOT NULL,
    total_seconds integer NOT NULL
);
RESET ROLE;
"""

# INSERT ... SELECT templates: %(start)d is the first new number, %(end)d the last.
ROW_TEMPLATES = {
    "users": """
        INSERT INTO users (login, display_name, email, language, avatar, created)
        SELECT 'user' || i, 'Benutzer Nr. ' || i || CASE WHEN i %% 3 = 0 THEN ' (Müller''s Büro)' ELSE '' END,
               'user' || i || '@pbx.example', CASE WHEN i %% 4 = 0 THEN 'en' ELSE 'de' END,
               CASE WHEN i %% 2 = 0 THEN decode(md5('avatar' || i) || md5('png' || i), 'hex') END,
               timestamptz '2024-01-01 08:00:00+00' + i * interval '1 hour'
        FROM generate_series(%(start)d, %(end)d) AS i""",
    "groups": """
        INSERT INTO groups (name, description)
        SELECT 'group' || i, 'Gruppe ' || i || E'\\nzweite Zeile' FROM generate_series(%(start)d, %(end)d) AS i""",
    "group_members": """
        INSERT INTO group_members (group_id, user_id)
        SELECT g.id, u.id FROM groups g JOIN users u ON (u.id + g.id) %% 4 = 0
        ON CONFLICT DO NOTHING""",
    "phone_numbers": """
        INSERT INTO phone_numbers (number, kind)
        SELECT '+4930' || (1000 + i), (ARRAY['internal', 'external', 'fax'])[1 + i %% 3]
        FROM generate_series(%(start)d, %(end)d) AS i""",
    "number_assignments": """
        INSERT INTO number_assignments (number_id, user_id, group_id)
        SELECT p.id, (SELECT id FROM users ORDER BY id OFFSET p.id %% greatest((SELECT count(*) FROM users), 1) LIMIT 1),
               CASE WHEN p.id %% 5 = 0 THEN (SELECT min(id) FROM groups) END
        FROM phone_numbers p WHERE p.kind <> 'fax' ON CONFLICT DO NOTHING""",
    "chat_history": """
        INSERT INTO chat_history (sender_id, recipient_id, sent_at, body)
        SELECT (SELECT min(id) FROM users) + i %% 7, (SELECT min(id) FROM users) + (i + 3) %% 11,
               timestamptz '2024-03-01 09:00:00+00' + i * interval '17 minutes',
               'Nachricht ' || i || ': Grüße, it''s "quoted" ' || repeat('blah ', i %% 9) || E'\\n-- Ende'
        FROM generate_series(%(start)d, %(end)d) AS i""",
    "cdr": """
        INSERT INTO cdr (call_start, src, dst, duration, billsec, disposition, uniqueid, recording)
        SELECT timestamptz '2024-02-01 07:00:00+00' + i * interval '13 minutes',
               (100 + i %% 20)::text, '+49301' || lpad((i * 37 %% 10000)::text, 4, '0'),
               30 + i %% 600, i %% 600, (ARRAY['ANSWERED', 'NO ANSWER', 'BUSY'])[1 + i %% 3],
               'uid-' || md5('cdr' || i),
               CASE WHEN i %% 10 = 0 THEN decode(repeat(md5('rec' || i), 8), 'hex') END
        FROM generate_series(%(start)d, %(end)d) AS i""",
    "cdr_summary": """
        INSERT INTO cdr_summary (day, calls, total_seconds)
        SELECT date '2024-02-01' + i, 10 + i %% 17, 3600 + i * 11
        FROM generate_series(%(start)d, %(end)d) AS i ON CONFLICT (day) DO NOTHING""",
}
# What build_appliance puts in (number of generated rows per table).
INITIAL_ROWS = (("users", 40), ("groups", 6), ("group_members", 0), ("phone_numbers", 60),
                ("number_assignments", 0), ("chat_history", 200), ("cdr", 300), ("cdr_summary", 30))

CONF_FILES = {
    "etc/asterisk/sip.conf": "[general]\ncontext=default\nudpbindaddr=0.0.0.0\n\n[100]\ntype=friend\nsecret=not-a-real-secret\n",
    "etc/asterisk/extensions.conf": "[default]\nexten => _1XX,1,Dial(SIP/${EXTEN},30)\nsame => n,VoiceMail(${EXTEN}@default)\n",
    "etc/asterisk/voicemail.conf": "[general]\nformat=wav\n\n[default]\n" + "".join(
        "%s => 1234,Benutzer %s\n" % (ext, ext) for ext in EXTENSIONS),
    "etc/asterisk/manager.conf": "[general]\nenabled=no\n",
    "var/lib/starface/config/starface.properties": "pbx.name=Demo-PBX\npbx.language=de\nbackup.enabled=true\n",
    "var/lib/starface/config/license.xml": "<license><customer>Beispiel GmbH</customer><users>50</users></license>\n",
    "var/lib/starface/config/certs/server.pem": "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n",
}
ANNOUNCEMENTS = ("welcome.wav", "closed.wav", "queue-wait.wav", "holiday.wav")


def wav_bytes(rng: random.Random, seconds: float = 1.0, rate: int = 8000) -> bytes:
    """A valid PCM WAV header followed by noise (8 kHz mono 16 bit)."""
    data = rng.randbytes(int(seconds * rate) * 2)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", len(data)) + data


def _write(path: str, data, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.chmod(path, mode)


def voicemail_dir(root_dir: str, ext: str) -> str:
    return os.path.join(root_dir, "var/spool/asterisk/voicemail/default", ext, "INBOX")


def add_voicemail(root_dir: str, ext: str, seed: int | None = None, seconds: float = 1.0) -> str:
    """A new message msgNNNN.wav (+ .txt) in <ext>'s INBOX; returns the .wav path."""
    inbox = voicemail_dir(root_dir, ext)
    os.makedirs(inbox, exist_ok=True)
    number = len([n for n in os.listdir(inbox) if n.endswith(".wav")])
    rng = random.Random(seed if seed is not None else "%s-%d" % (ext, number))
    base = os.path.join(inbox, "msg%04d" % number)
    _write(base + ".wav", wav_bytes(rng, seconds), 0o640)
    _write(base + ".txt", "[message]\norigmailbox=%s\ncallerid=\"Anrufer %d\" <+4930%04d>\nduration=%d\n"
           % (ext, number, rng.randrange(10000), int(seconds)), 0o640)
    return base + ".wav"


def build_files(root_dir: str, seed: int = 1) -> None:
    """The appliance's file trees under root_dir."""
    rng = random.Random(seed)
    for rel, text in CONF_FILES.items():
        _write(os.path.join(root_dir, rel), text, 0o640)
    for i, ext in enumerate(EXTENSIONS):
        for j in range(1 + i % 2):
            add_voicemail(root_dir, ext, seed=seed * 1000 + i * 10 + j, seconds=0.5 + j)
    os.makedirs(os.path.join(root_dir, "var/spool/asterisk/voicemail/default", "300", "INBOX"), exist_ok=True)  # empty box
    for name in ANNOUNCEMENTS:
        _write(os.path.join(root_dir, "var/lib/starface/announcements", name), wav_bytes(rng, 1.5 + rng.random()))


def build_database(cluster, name: str = DATABASE) -> None:
    """Create database `name` owned by the test role, with schema and sample rows."""
    cluster.create_database(name)
    cluster.psql(SCHEMA_SQL % {"role": cluster.user}, db=name)
    for table, count in INITIAL_ROWS:
        add_rows(cluster, table, count, db=name)


def build_appliance(root_dir: str, cluster, seed: int = 1, tcp: bool = False) -> dict:
    """Database + file trees; returns the appliance `profile` (store.py shape) for them.

    tcp=True makes the profile connect over 127.0.0.1 instead of the socket dir
    (the test role needs its password either way)."""
    os.makedirs(root_dir, exist_ok=True)
    build_files(root_dir, seed)
    build_database(cluster)
    return make_profile(root_dir, cluster, tcp=tcp)


def make_profile(root_dir: str, cluster, tcp: bool = False, name: str = DATABASE) -> dict:
    categories = {}
    for cat, spec in CATEGORY_LAYOUT.items():
        categories[cat] = {
            "tables": list(spec["tables"]),
            "exclude_tables": list(spec["exclude_tables"]),
            "paths": [os.path.join(root_dir, p) for p in spec["paths"]],
        }
    return {"database": cluster.database_profile(name, tcp=tcp), "categories": categories}


def add_rows(cluster, table: str, count: int = 1, db: str = DATABASE) -> None:
    """Append `count` generated rows to a sample table (link tables: fill in missing links)."""
    if table not in ROW_TEMPLATES:
        raise ValueError("no row template for table %r (%s)" % (table, ", ".join(sorted(ROW_TEMPLATES))))
    key = {"users": "id", "groups": "id", "phone_numbers": "id", "chat_history": "id", "cdr": "id",
           "cdr_summary": "day - date '2024-02-01'"}.get(table)
    start = 1
    if key:
        start = int(cluster.psql("SELECT coalesce(max(%s), 0) + 1 FROM %s" % (key, table), db=db).strip())
    cluster.psql(ROW_TEMPLATES[table] % {"start": start, "end": start + count - 1}, db=db)


def table_rows(cluster, table: str, db: str = DATABASE) -> list:
    """Every row of `table` ("name" or "schema.name", exact case) as a dict (bytea as
    '\\x..' hex), in a stable order."""
    quoted = ".".join('"%s"' % part.replace('"', '""') for part in table.split("."))
    out = cluster.psql("SELECT row_to_json(t)::text FROM %s AS t ORDER BY 1" % quoted, db=db)
    return [json.loads(line) for line in out.splitlines() if line]


def table_names(cluster, db: str = DATABASE, schema: str = "public") -> list:
    out = cluster.psql("SELECT tablename FROM pg_tables WHERE schemaname = '%s' ORDER BY 1" % schema, db=db)
    return out.split()


def database_snapshot(cluster, db: str = DATABASE) -> dict:
    """{table: rows} for every table of schema public: compare before/after a restore."""
    return {table: table_rows(cluster, table, db=db) for table in table_names(cluster, db)}


def tree_snapshot(path: str) -> dict:
    """{relative path: sha256 (files), '->target' (links), 'dir' (directories)} of a tree."""
    out = {}
    for current, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(current, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                out[rel] = "->" + os.readlink(full)
            elif os.path.isdir(full):
                out[rel] = "dir"
            else:
                with open(full, "rb") as handle:
                    out[rel] = hashlib.sha256(handle.read()).hexdigest()
    return out


def change_files(root_dir: str) -> list:
    """Change the trees after a backup: a new voicemail, an edited and a new config
    file, a removed announcement. Returns the changed paths."""
    changed = [add_voicemail(root_dir, EXTENSIONS[0], seed=4242)]
    conf = os.path.join(root_dir, "etc/asterisk/sip.conf")
    with open(conf, "a", encoding="utf-8") as handle:
        handle.write("\n[999]\ntype=friend\n")
    changed.append(conf)
    extra = os.path.join(root_dir, "etc/asterisk/new.conf")
    _write(extra, "; added after the backup\n", 0o640)
    changed.append(extra)
    gone = os.path.join(root_dir, "var/lib/starface/announcements", ANNOUNCEMENTS[-1])
    os.unlink(gone)
    changed.append(gone)
    return changed

"""The SQL of the PostgreSQL backend, one statement per step, composed with the table names.

Each statement is headed by a comment stating its parameters and result. Every expiry is
decided with the server's ``now()``; durations arrive as whole milliseconds
(``%(ttl_ms)s``, ``%(keep_ms)s``) and become intervals on the server. Statements that
check a lease use ``HELD_BY_THIS_SESSION``: the lease row names this session's process
and this owner and token, and ``pg_locks`` shows this session holding the advisory lock.
"""

from __future__ import annotations

from psycopg import sql

from .schema import Tables

__all__ = ["Statements"]

# The advisory lock of the lease, held by the session running the statement.
# Parameters: %(classid)s, %(objid)s (see keys.pg_locks_ids).
LOCK_HELD = """EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND classid = %(classid)s::oid AND objid = %(objid)s::oid AND objsubid = 1
)"""

# Parameters: %(prefix)s, %(key)s, %(owner)s, %(token)s and those of LOCK_HELD.
HELD_BY_THIS_SESSION = f"""prefix = %(prefix)s AND key = %(key)s AND owner = %(owner)s AND token = %(token)s
    AND NOT released AND expires_at > now() AND pid = pg_backend_pid() AND {LOCK_HELD}"""

TEXTS: dict[str, str] = {
    # Parameters: %(marker)s (this connection's marker), %(lock_key)s, %(ttl_ms)s.
    # Returns one row: locked (true, false, or NULL when the marker is not this session's).
    # The session's idle timeouts become the TTL only when the lock was taken, so the
    # server ends the session, and frees the lock, once the holder stops sending requests.
    "try_lock": """
        WITH attempt AS MATERIALIZED (
            SELECT CASE WHEN current_setting('planlagt.session', true) = %(marker)s
                        THEN pg_try_advisory_lock(%(lock_key)s) END AS locked
        )
        SELECT locked,
               set_config('idle_session_timeout', CASE WHEN locked THEN %(ttl_ms)s::text ELSE '0' END, false),
               set_config('idle_in_transaction_session_timeout',
                          CASE WHEN locked THEN %(ttl_ms)s::text ELSE '0' END, false)
        FROM attempt""",
    # Parameters: %(ttl_ms)s. Sets the idle timeouts of a lock session to a new TTL.
    "set_ttl": """
        SELECT set_config('idle_session_timeout', %(ttl_ms)s::text, false),
               set_config('idle_in_transaction_session_timeout', %(ttl_ms)s::text, false)""",
    # Frees every advisory lock of the session and turns its idle timeouts off, so the
    # connection can go back to the pool holding nothing.
    "unlock_all": """
        SELECT pg_advisory_unlock_all(),
               set_config('idle_session_timeout', '0', false),
               set_config('idle_in_transaction_session_timeout', '0', false)""",
    # Run by the session that has just taken the advisory lock.
    # Parameters: %(prefix)s, %(key)s, %(owner)s, %(holder)s, %(ttl_ms)s.
    # Returns the new fencing token, or no row when the key is still blocked: kept after a
    # release, or held by a lease whose session ended (crash, lost connection, server
    # restart) before its TTL ran out.
    "issue_lease": """
        WITH blocked AS (
            SELECT 1 FROM {leases}
            WHERE prefix = %(prefix)s AND key = %(key)s
              AND CASE WHEN released THEN kept_until > now() ELSE expires_at > now() END
        ), issued AS (
            INSERT INTO {fencing_tokens} AS t (prefix, key, last_token)
            SELECT %(prefix)s, %(key)s, 1 WHERE NOT EXISTS (SELECT 1 FROM blocked)
            ON CONFLICT (prefix, key) DO UPDATE SET last_token = t.last_token + 1
            RETURNING last_token
        )
        INSERT INTO {leases} AS l (prefix, key, owner, token, holder, pid, expires_at, released, kept_until)
        SELECT %(prefix)s, %(key)s, %(owner)s, last_token, %(holder)s, pg_backend_pid(),
               now() + %(ttl_ms)s * interval '1 millisecond', false, NULL
        FROM issued
        ON CONFLICT (prefix, key) DO UPDATE SET
            owner = excluded.owner, token = excluded.token, holder = excluded.holder, pid = excluded.pid,
            expires_at = excluded.expires_at, released = false, kept_until = NULL
        RETURNING token""",
    # Parameters: those of HELD_BY_THIS_SESSION, %(ttl_ms)s.
    # Returns one row when the lease is held by this session (and records its new expiry).
    "touch_lease": f"""
        UPDATE {{leases}} SET expires_at = now() + %(ttl_ms)s * interval '1 millisecond'
        WHERE {HELD_BY_THIS_SESSION}
        RETURNING 1""",
    # Parameters: those of HELD_BY_THIS_SESSION, %(keep_ms)s.
    # Returns one row when the lease was held by this session and is now kept as released.
    "keep_released": f"""
        UPDATE {{leases}} SET released = true, kept_until = now() + %(keep_ms)s * interval '1 millisecond'
        WHERE {HELD_BY_THIS_SESSION}
        RETURNING 1""",
    # Parameters: those of HELD_BY_THIS_SESSION.
    # Returns one row when the lease was held by this session and its row is now deleted.
    "delete_lease": f"""
        DELETE FROM {{leases}} WHERE {HELD_BY_THIS_SESSION}
        RETURNING 1""",
    # Parameters: %(prefix)s, %(key)s, %(classid)s, %(objid)s.
    # Returns token, holder, released, seconds left, and whether the lease is live: kept
    # after release and not yet past kept_until, or not past its expiry, or still locked by
    # the session named in the row.
    "inspect": """
        SELECT l.token, l.holder, l.released,
               extract(epoch FROM (CASE WHEN l.released THEN l.kept_until ELSE l.expires_at END) - now())::float8,
               CASE WHEN l.released THEN l.kept_until > now()
                    ELSE l.expires_at > now() OR EXISTS (
                        SELECT 1 FROM pg_locks
                        WHERE locktype = 'advisory' AND granted AND pid = l.pid
                          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                          AND classid = %(classid)s::oid AND objid = %(objid)s::oid AND objsubid = 1)
               END
        FROM {leases} l
        WHERE l.prefix = %(prefix)s AND l.key = %(key)s""",
    # Parameters: %(prefix)s, %(job)s, %(fire_ms)s, %(token)s, %(instance_id)s,
    # %(max_attempts)s, %(keep_ms)s.
    # Returns the new state when an attempt began, else no row (and the row stays locked).
    # A stored state past its keep time counts as absent.
    "begin_attempt": """
        INSERT INTO {fires} AS f (prefix, job, fire_ms, attempts, outcome, token, instance_id, expires_at)
        VALUES (%(prefix)s, %(job)s, %(fire_ms)s, 1, NULL, %(token)s, %(instance_id)s,
                now() + %(keep_ms)s * interval '1 millisecond')
        ON CONFLICT (prefix, job, fire_ms) DO UPDATE SET
            attempts = CASE WHEN f.expires_at <= now() THEN 1 ELSE f.attempts + 1 END,
            outcome = NULL, token = excluded.token, instance_id = excluded.instance_id,
            expires_at = excluded.expires_at
        WHERE f.expires_at <= now() OR (f.outcome IS NULL AND f.attempts < %(max_attempts)s)
        RETURNING attempts, outcome, token, instance_id""",
    # Parameters: %(prefix)s, %(job)s, %(fire_ms)s. Returns the stored state, if not past its keep time.
    "get_fire": """
        SELECT attempts, outcome, token, instance_id FROM {fires}
        WHERE prefix = %(prefix)s AND job = %(job)s AND fire_ms = %(fire_ms)s AND expires_at > now()""",
    # Parameters: %(prefix)s, %(job)s, %(fire_ms)s, %(outcome)s, %(token)s (NULL unfenced),
    # %(instance_id)s, %(fenced)s, %(keep_ms)s, %(fire_time)s, %(record)s.
    # Returns one row when this call closed the fire time (and appended the run record).
    # Unfenced, it closes only a fire time at which no attempt has begun.
    "finish_fire": """
        WITH closed AS (
            INSERT INTO {fires} AS f (prefix, job, fire_ms, attempts, outcome, token, instance_id, expires_at)
            VALUES (%(prefix)s, %(job)s, %(fire_ms)s, 0, %(outcome)s, %(token)s, %(instance_id)s,
                    now() + %(keep_ms)s * interval '1 millisecond')
            ON CONFLICT (prefix, job, fire_ms) DO UPDATE SET
                attempts = CASE WHEN f.expires_at <= now() THEN 0 ELSE f.attempts END,
                token = CASE WHEN %(fenced)s THEN excluded.token
                             WHEN f.expires_at <= now() THEN NULL ELSE f.token END,
                outcome = excluded.outcome, instance_id = excluded.instance_id, expires_at = excluded.expires_at
            WHERE f.expires_at <= now() OR (f.outcome IS NULL AND (%(fenced)s OR f.attempts = 0))
            RETURNING 1
        )
        INSERT INTO {runs} (prefix, job, fire_time, record)
        SELECT %(prefix)s, %(job)s, %(fire_time)s, %(record)s FROM closed
        RETURNING 1""",
    # Parameters: %(prefix)s, %(job)s, %(fire_time)s, %(record)s.
    "record_run": """
        INSERT INTO {runs} (prefix, job, fire_time, record)
        VALUES (%(prefix)s, %(job)s, %(fire_time)s, %(record)s)""",
    # Parameters: %(prefix)s, %(max_per_job)s, %(max_age_s)s. The row count is the number deleted.
    "trim_runs": """
        WITH ranked AS (
            SELECT id, fire_time,
                   row_number() OVER (PARTITION BY job ORDER BY fire_time DESC, id DESC) AS position
            FROM {runs} WHERE prefix = %(prefix)s
        )
        DELETE FROM {runs} r USING ranked
        WHERE r.id = ranked.id
          AND (ranked.position > %(max_per_job)s
               OR ranked.fire_time < extract(epoch FROM now())::float8 - %(max_age_s)s)""",
    # Parameters: %(prefix)s, %(instance_id)s, %(info)s (JSON), %(ttl_ms)s.
    # Returns instance_id, info, last_heartbeat of every live instance, this one included.
    # Also deletes, without waiting for rows other transactions hold, the instances past
    # their TTL with their job definitions, and up to 1000 fire states past their keep time.
    "heartbeat": """
        WITH expired AS (
            DELETE FROM {instances}
            WHERE prefix = %(prefix)s AND instance_id IN (
                SELECT instance_id FROM {instances}
                WHERE prefix = %(prefix)s AND instance_id <> %(instance_id)s AND expires_at <= now()
                FOR UPDATE SKIP LOCKED)
            RETURNING instance_id
        ), dropped_definitions AS (
            DELETE FROM {job_definitions} d USING expired e
            WHERE d.prefix = %(prefix)s AND d.instance_id = e.instance_id
        ), dropped_fires AS (
            DELETE FROM {fires}
            WHERE (prefix, job, fire_ms) IN (
                SELECT prefix, job, fire_ms FROM {fires}
                WHERE prefix = %(prefix)s AND expires_at <= now()
                LIMIT 1000 FOR UPDATE SKIP LOCKED)
        ), beat AS (
            INSERT INTO {instances} AS i (prefix, instance_id, info, last_heartbeat, expires_at)
            VALUES (%(prefix)s, %(instance_id)s, %(info)s, extract(epoch FROM now())::float8,
                    now() + %(ttl_ms)s * interval '1 millisecond')
            ON CONFLICT (prefix, instance_id) DO UPDATE SET
                info = excluded.info, last_heartbeat = excluded.last_heartbeat, expires_at = excluded.expires_at
            RETURNING instance_id, info, last_heartbeat
        )
        SELECT instance_id, info, last_heartbeat FROM beat
        UNION ALL
        SELECT instance_id, info, last_heartbeat FROM {instances}
        WHERE prefix = %(prefix)s AND instance_id <> %(instance_id)s AND expires_at > now()""",
    # Parameters: %(prefix)s. Returns instance_id, info, last_heartbeat of every live instance.
    "list_instances": """
        SELECT instance_id, info, last_heartbeat FROM {instances}
        WHERE prefix = %(prefix)s AND expires_at > now()""",
    # Parameters: %(prefix)s, %(instance_id)s. Deletes the instance and its job definitions.
    "leave": """
        WITH gone AS (
            DELETE FROM {instances} WHERE prefix = %(prefix)s AND instance_id = %(instance_id)s
        )
        DELETE FROM {job_definitions} WHERE prefix = %(prefix)s AND instance_id = %(instance_id)s""",
    # Parameters: %(prefix)s, %(instance_id)s, %(definitions)s (JSON object).
    "announce_jobs": """
        INSERT INTO {job_definitions} (prefix, instance_id, definitions)
        VALUES (%(prefix)s, %(instance_id)s, %(definitions)s)
        ON CONFLICT (prefix, instance_id) DO UPDATE SET definitions = excluded.definitions""",
    # Parameters: %(prefix)s. Returns instance_id, definitions of every live instance that announced.
    "list_job_definitions": """
        SELECT d.instance_id, d.definitions
        FROM {job_definitions} d JOIN {instances} i ON i.prefix = d.prefix AND i.instance_id = d.instance_id
        WHERE d.prefix = %(prefix)s AND i.expires_at > now()""",
    # Parameters: %(prefix)s. Returns one row: the paused jobs and the trigger requests (JSON).
    "read_control": """
        SELECT ARRAY(SELECT job FROM {paused_jobs} WHERE prefix = %(prefix)s),
               ARRAY(SELECT request FROM {triggers} WHERE prefix = %(prefix)s)""",
    # Parameters: %(prefix)s, %(job)s.
    "pause": """
        INSERT INTO {paused_jobs} (prefix, job) VALUES (%(prefix)s, %(job)s)
        ON CONFLICT (prefix, job) DO NOTHING""",
    # Parameters: %(prefix)s, %(job)s.
    "resume": "DELETE FROM {paused_jobs} WHERE prefix = %(prefix)s AND job = %(job)s",
    # Parameters: %(prefix)s, %(request_id)s, %(requested_at)s, %(request)s (JSON).
    "add_trigger": """
        INSERT INTO {triggers} (prefix, request_id, requested_at, request)
        VALUES (%(prefix)s, %(request_id)s, %(requested_at)s, %(request)s)
        ON CONFLICT (prefix, request_id) DO NOTHING""",
    # Parameters: %(prefix)s, %(request_id)s. The row count is 1 when this call removed it.
    "remove_trigger": "DELETE FROM {triggers} WHERE prefix = %(prefix)s AND request_id = %(request_id)s",
}


class Statements:
    """The statements of :data:`TEXTS`, composed with the table names of one schema.

    Each is an attribute of the same name, e.g. ``statements.try_lock``.
    """

    def __init__(self, tables: Tables) -> None:
        names = {
            "leases": tables.leases,
            "fencing_tokens": tables.fencing_tokens,
            "fires": tables.fires,
            "runs": tables.runs,
            "instances": tables.instances,
            "job_definitions": tables.job_definitions,
            "paused_jobs": tables.paused_jobs,
            "triggers": tables.triggers,
        }
        self.tables = tables
        self._composed = {name: sql.SQL(text).format(**names) for name, text in TEXTS.items()}

    def __getattr__(self, name: str) -> sql.Composed:
        try:
            return self._composed[name]
        except KeyError:
            raise AttributeError(name) from None

    def list_runs(self, *, job: bool, since: bool, until: bool) -> sql.Composed:
        """Return the query listing run records newest first, with the filters that are in use.

        Parameters: %(prefix)s, %(job)s, %(since)s, %(until)s (each only when in use),
        %(limit)s. Returns the record JSON of each row.
        """
        conditions = [sql.SQL("prefix = %(prefix)s")]
        if job:
            conditions.append(sql.SQL("job = %(job)s"))
        if since:
            conditions.append(sql.SQL("fire_time >= %(since)s"))
        if until:
            conditions.append(sql.SQL("fire_time <= %(until)s"))
        return sql.SQL("SELECT record FROM {} WHERE {} ORDER BY fire_time DESC, id DESC LIMIT %(limit)s").format(
            self.tables.runs, sql.SQL(" AND ").join(conditions)
        )

-- Alert history: one row per episode of a target breaching its thresholds, written by the
-- operator (through the region's writer URL, the ETL's) when the episode starts and again
-- when it ends. The id is the episode's stable key, the same the notifications carry
-- (namespace/probe/target@start in Unix seconds), so a write repeated after a crash or a
-- leader change updates the row instead of adding one. A plain table in both storage modes:
-- a few rows per incident, kept until deleted by hand.

create table if not exists alerts (
    id         text primary key,
    namespace  text not null,
    probe      text not null,
    region     text not null,
    target     text not null,
    state      text not null check (state in ('firing', 'resolved')),
    reason     text not null,
    started_at timestamptz not null,
    ended_at   timestamptz check (ended_at is null or ended_at >= started_at),
    -- FiberNotifiers that acknowledged the episode's start, as last recorded.
    notified   text[] not null default '{}',
    updated_at timestamptz not null default now()
);

create index if not exists alerts_started_at on alerts (started_at desc);

do $grants$
begin
    if exists (select 1 from pg_roles where rolname = 'fiberstack_writer') then
        grant select, insert, update on alerts to fiberstack_writer;
        grant select on alerts to fiberstack_reader;
    end if;
end
$grants$;

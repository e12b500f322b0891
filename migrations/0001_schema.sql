-- FiberStack's tables, the same in both storage modes (DESIGN.md §4): the node registry and
-- one row per sample, whose columns carry the wire Sample's field names. Objects are created
-- in the first schema of the search_path.

create table if not exists fiberstack_meta (
    key   text primary key,
    value text not null
);

create table if not exists nodes (
    name          text primary key,
    region        text not null,
    country       text not null check (country ~ '^[A-Z]{2}$'),
    labels        jsonb not null default '{}'::jsonb,
    agent_version text not null default '',
    first_seen_at timestamptz not null default now(),
    last_seen_at  timestamptz not null default now()
);

create table if not exists metrics (
    time           timestamptz not null,
    node           text not null,
    probe          text not null,
    region         text not null,
    target         text not null,
    kind           text not null check (kind in ('icmp', 'tcp', 'http', 'dns')),
    address        text not null default '',
    up             boolean not null,
    latency_ms     double precision check (latency_ms between 0 and 10000),
    latency_min_ms double precision check (latency_min_ms between 0 and 10000),
    latency_max_ms double precision check (latency_max_ms between 0 and 10000),
    jitter_ms      double precision check (jitter_ms between 0 and 10000),
    packet_loss    double precision check (packet_loss between 0 and 100),
    sent           integer check (sent >= 0),
    received       integer check (received >= 0),
    status_code    smallint check (status_code between 100 and 599),
    error          text,
    metadata       jsonb not null default '{}'::jsonb
);

-- The natural key: a batch delivered twice is stored once. It includes `time`, so it is
-- also a valid unique index on a hypertable partitioned by time.
create unique index if not exists metrics_natural_key on metrics (node, probe, target, time);
create index if not exists metrics_probe_target_time on metrics (probe, target, time desc);

-- Roles: the ETL writes, Grafana, the read API and the operator only read. Roles belong to
-- the whole cluster, so another database (or a concurrent migration) may have made them;
-- a managed database may not let us create roles at all, which is not fatal.
do $$
begin
    begin
        create role fiberstack_writer nologin;
    exception when duplicate_object or unique_violation then null;
    end;
    begin
        create role fiberstack_reader nologin;
    exception when duplicate_object or unique_violation then null;
    end;
exception when insufficient_privilege then
    raise notice 'not allowed to create roles (%): create fiberstack_writer and fiberstack_reader and grant them yourself', sqlerrm;
end
$$;

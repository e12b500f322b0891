-- Traceroute (issue 14): a new check kind, the path's fingerprint on the sample, and the hops
-- of each round in their own table.
--
-- * metrics.kind accepts 'traceroute' (the model's CheckKind::ALL; etl/tests/check_kinds.rs).
-- * metrics.path_fingerprint: 16 hex digits, equal for rounds over the same routers; set on
--   traceroute samples only.
-- * hops: one row per hop of a round, keyed by the sample's natural key and the TTL. Kept as
--   long as raw samples:
--   - TimescaleDB: a hypertable with compression after 3 days and a retention policy of the
--     raw period, which follows fiberstack_set_retention (a trigger on the setting), so the
--     function of 0004/0007 needs no change here;
--   - plain PostgreSQL: a foreign key to the sample with ON DELETE CASCADE, so the ETL's
--     retention of metrics (fiberstack_apply_retention) takes the hops with their sample.

alter table metrics drop constraint if exists metrics_kind_check;
alter table metrics add constraint metrics_kind_check
    check (kind in ('icmp', 'tcp', 'http', 'dns', 'traceroute'));

alter table metrics add column if not exists path_fingerprint text
    check (path_fingerprint ~ '^[0-9a-f]{16}$');

create table if not exists hops (
    time           timestamptz not null,
    node           text not null,
    probe          text not null,
    target         text not null,
    ttl            smallint not null check (ttl between 1 and 255),
    -- null: no probe of the hop was answered (`*`)
    address        inet,
    sent           integer not null check (sent >= 1),
    received       integer not null check (received >= 0 and received <= sent),
    packet_loss    double precision not null check (packet_loss between 0 and 100),
    latency_ms     double precision check (latency_ms between 0 and 10000),
    latency_min_ms double precision check (latency_min_ms between 0 and 10000),
    latency_max_ms double precision check (latency_max_ms between 0 and 10000),
    check ((address is null) = (received = 0))
);

-- The sample's natural key in the order of metrics_natural_key_ptn (0005), then the hop.
create unique index if not exists hops_natural_key on hops (probe, target, node, time, ttl);

do $migration$
begin
    if (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb' then
        perform create_hypertable('hops', by_range('time', interval '1 day'),
                                  if_not_exists => true, migrate_data => true);
        alter table hops set (timescaledb.compress,
                              timescaledb.compress_segmentby = 'node, probe, target',
                              timescaledb.compress_orderby = 'time desc, ttl');
        perform add_compression_policy('hops', interval '3 days', if_not_exists => true);
        perform add_retention_policy('hops', fiberstack_retention('raw'), if_not_exists => true);

        create or replace function fiberstack_hops_retention() returns trigger
        language plpgsql as $body$
        begin
            perform remove_retention_policy('hops', if_exists => true);
            perform add_retention_policy('hops', new.value::interval);
            return new;
        end
        $body$;
        drop trigger if exists hops_follow_raw_retention on fiberstack_meta;
        create trigger hops_follow_raw_retention
            after insert or update of value on fiberstack_meta
            for each row when (new.key = 'retention_raw')
            execute function fiberstack_hops_retention();
    else
        alter table hops add constraint hops_sample
            foreign key (probe, target, node, time)
            references metrics (probe, target, node, time) on delete cascade;
    end if;

    if exists (select 1 from pg_roles where rolname = 'fiberstack_writer') then
        grant select, insert on hops to fiberstack_writer;
        grant select on hops to fiberstack_reader;
        if (select value from fiberstack_meta where key = 'storage_mode') = 'postgres' then
            grant delete on hops to fiberstack_writer;
        end if;
    end if;
end
$migration$;

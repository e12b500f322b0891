-- Hourly and daily rollups, and data lifecycle. Two modes from one migration:
--
-- * TimescaleDB, when the extension is available: `metrics` becomes a hypertable with
--   compression after 3 days (segmented by node, probe and target: the natural key's columns,
--   so a duplicate can still be found in a compressed chunk) and retention of 7 days;
--   metrics_hourly (kept 90 days) and metrics_daily (kept 365 days) are continuous
--   aggregates with refresh policies.
-- * Plain PostgreSQL otherwise: metrics_hourly and metrics_daily are tables with the same
--   columns, which fiber-etl's maintenance loop refreshes (fiberstack_refresh_rollups) and
--   trims (fiberstack_apply_retention).
--
-- Percentiles are computed from the samples of each bucket, never from other percentiles.
do $migration$
declare
    timescale boolean := exists (select 1 from pg_available_extensions where name = 'timescaledb');
    rollup_select text := $q$
        select %1$s as bucket, node, probe, target,
               count(*) as samples,
               count(*) filter (where up) as up_samples,
               100.0 * count(*) filter (where up) / count(*) as uptime_pct,
               avg(latency_ms) as latency_avg_ms,
               min(coalesce(latency_min_ms, latency_ms)) as latency_min_ms,
               max(coalesce(latency_max_ms, latency_ms)) as latency_max_ms,
               percentile_cont(0.50) within group (order by latency_ms) as latency_p50_ms,
               percentile_cont(0.95) within group (order by latency_ms) as latency_p95_ms,
               percentile_cont(0.99) within group (order by latency_ms) as latency_p99_ms,
               avg(jitter_ms) as jitter_avg_ms,
               avg(packet_loss) as packet_loss_avg
        from metrics
        %2$s
        group by 1, 2, 3, 4
    $q$;
begin
    if timescale then
        create extension if not exists timescaledb;
        perform create_hypertable('metrics', by_range('time', interval '1 day'),
                                  if_not_exists => true, migrate_data => true);
        alter table metrics set (timescaledb.compress,
                                 timescaledb.compress_segmentby = 'node, probe, target',
                                 timescaledb.compress_orderby = 'time desc');
        perform add_compression_policy('metrics', interval '3 days', if_not_exists => true);
        perform add_retention_policy('metrics', interval '7 days', if_not_exists => true);

        execute format('create materialized view metrics_hourly
                          with (timescaledb.continuous, timescaledb.materialized_only = false) as %s
                          with no data',
                       format(rollup_select, $$time_bucket('1 hour', time)$$, ''));
        execute format('create materialized view metrics_daily
                          with (timescaledb.continuous, timescaledb.materialized_only = false) as %s
                          with no data',
                       format(rollup_select, $$time_bucket('1 day', time)$$, ''));
        perform add_continuous_aggregate_policy('metrics_hourly', start_offset => interval '1 day',
            end_offset => interval '1 hour', schedule_interval => interval '15 minutes', if_not_exists => true);
        perform add_continuous_aggregate_policy('metrics_daily', start_offset => interval '3 days',
            end_offset => interval '1 day', schedule_interval => interval '1 hour', if_not_exists => true);
        perform add_retention_policy('metrics_hourly', interval '90 days', if_not_exists => true);
        perform add_retention_policy('metrics_daily', interval '365 days', if_not_exists => true);
    else
        create table metrics_hourly (
            bucket timestamptz not null, node text not null, probe text not null, target text not null,
            samples bigint not null, up_samples bigint not null, uptime_pct numeric not null,
            latency_avg_ms double precision, latency_min_ms double precision, latency_max_ms double precision,
            latency_p50_ms double precision, latency_p95_ms double precision, latency_p99_ms double precision,
            jitter_avg_ms double precision, packet_loss_avg double precision,
            primary key (bucket, node, probe, target)
        );
        create table metrics_daily (like metrics_hourly including all);
        -- Retention and rollup refreshes select by time alone (a hypertable has this index
        -- by default).
        create index metrics_time on metrics (time);

        -- Recomputes the buckets of [from_time, to_time) from the raw samples.
        execute format($f$
            create function fiberstack_refresh_rollups(from_time timestamptz, to_time timestamptz)
            returns void language sql as $body$
                delete from metrics_hourly
                 where bucket >= date_trunc('hour', from_time) and bucket < to_time;
                insert into metrics_hourly %1$s;
                delete from metrics_daily
                 where bucket >= date_trunc('day', from_time) and bucket < to_time;
                insert into metrics_daily %2$s;
            $body$ $f$,
            format(rollup_select, $$date_trunc('hour', time)$$,
                   $$where time >= date_trunc('hour', from_time) and time < to_time$$),
            format(rollup_select, $$date_trunc('day', time)$$,
                   $$where time >= date_trunc('day', from_time) and time < to_time$$));

        -- Retention of plain mode, the same periods as the TimescaleDB policies.
        create function fiberstack_apply_retention(now_time timestamptz default now())
        returns void language sql as $body$
            delete from metrics where time < now_time - interval '7 days';
            delete from metrics_hourly where bucket < now_time - interval '90 days';
            delete from metrics_daily where bucket < now_time - interval '365 days';
        $body$;
    end if;

    insert into fiberstack_meta (key, value)
    values ('storage_mode', case when timescale then 'timescaledb' else 'postgres' end)
    on conflict (key) do update set value = excluded.value;

    -- Grants, when the roles exist (see 0001).
    if exists (select 1 from pg_roles where rolname = 'fiberstack_writer') then
        execute format('grant usage on schema %I to fiberstack_writer, fiberstack_reader', current_schema());
        grant select, insert on metrics to fiberstack_writer;
        grant select, insert, update on nodes to fiberstack_writer;
        grant select on fiberstack_meta, nodes, metrics, metrics_hourly, metrics_daily to fiberstack_reader;
        grant select on fiberstack_meta, metrics_hourly, metrics_daily to fiberstack_writer;
        if not timescale then
            grant insert, update, delete on metrics_hourly, metrics_daily to fiberstack_writer;
            grant delete on metrics to fiberstack_writer;
        end if;
    end if;
end
$migration$;

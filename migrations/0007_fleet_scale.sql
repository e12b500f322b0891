-- Dashboards and status at fleet scale (issue 17): an index for the newest sample of a
-- target, and latency histograms in the rollups so percentiles over long ranges are merged,
-- not re-read from raw samples nor averaged from hourly percentiles.
--
-- 1. The natural key becomes (probe, target, time, node): still the one unique index that
--    ON CONFLICT (node, probe, target, time) matches (any order of the same columns), so
--    inserts maintain two indexes as before (0005), but it now answers "the newest sample of
--    this target of this probe" by reading one index entry. With (probe, target, node, time)
--    that lookup (the operator's status, every period) had no index serving its order: the
--    planner walked the time index backwards until it met the target, which for a target
--    with no samples yet (a new target or probe) meant the whole index — 1.9–2.5 s per call
--    on 8.64M samples, growing with retention. Building the index blocks writes while it
--    lasts (the ETL's writes wait; nothing is lost): a few seconds per million samples.
--
-- 2. Latency histograms: per bucket, how many samples fell in each latency bin. Bins are
--    log-linear with a ratio of 1.02 from 0.01 ms (bin b holds [0.01·1.02^b, 0.01·1.02^(b+1))
--    ms; 0–697 cover the 0–10,000 ms a sample may hold), so a bin's geometric middle is within
--    1 % of any latency in it: a percentile read from merged histograms is within 1 % of the
--    sample it stands for (latencies below 0.01 ms all go to bin 0). Histograms of any
--    buckets merge by adding counts, which is what a day, a month or a year of percentiles
--    needs. Kept per target (with its region and kind, for the fleet's tables) and per node
--    (with its region, for the fleet's and the region's charts: far fewer rows), hourly and
--    daily, with the retention of metrics_hourly and metrics_daily:
--      metrics_latency_hourly, metrics_latency_daily
--          (bucket, region, node, probe, target, kind, bin, samples)
--      metrics_latency_node_hourly, metrics_latency_node_daily
--          (bucket, region, node, bin, samples)
--    fiberstack_latency_quantile(q, bins, counts) reads a percentile from a merged histogram.
--    In TimescaleDB mode they are continuous aggregates with refresh policies like 0002's; on
--    a database that already holds samples, fill them once from the raw samples still kept
--    with `CALL refresh_continuous_aggregate('<view>', NULL, now())` for each (TimescaleDB
--    refuses that inside the migration's transaction; until then their policies cover the
--    last 1 or 3 days). In plain mode they are tables that fiberstack_refresh_rollups
--    (fiber-etl's maintenance loop) now refreshes together with the summaries, and this
--    migration fills them from the raw samples kept.

create unique index if not exists metrics_natural_key_pttn on metrics (probe, target, time, node);
drop index if exists metrics_natural_key_ptn;

-- The bin of a latency in milliseconds (NULL for NULL).
create or replace function fiberstack_latency_bin(latency_ms double precision) returns smallint
language sql immutable parallel safe as $$
    select least(697, greatest(0, floor(ln(greatest(latency_ms, 0.01) / 0.01) / ln(1.02))))::smallint
$$;

-- The latency (ms) at quantile q (0–1) of a histogram given as bins and their counts: the
-- middle of the bin that holds the sample at rank floor(q·(n−1)), the sample
-- percentile_cont(q) starts from. NULL for an empty histogram.
create or replace function fiberstack_latency_quantile(q double precision, bins smallint[], counts numeric[])
returns double precision language sql immutable parallel safe as $$
    select 0.01 * power(1.02, b + 0.5)
      from (select b, sum(c) over (order by b) as below, sum(c) over () as total
              from unnest(bins, counts) u(b, c)) h
     where below > q * (total - 1)
     order by b
     limit 1
$$;

do $migration$
declare
    timescale boolean := (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb';
    target_select text := $q$
        select %1$s as bucket, region, node, probe, target, kind,
               fiberstack_latency_bin(latency_ms) as bin, count(*) as samples
          from metrics
         where latency_ms is not null %2$s
         group by 1, 2, 3, 4, 5, 6, 7
    $q$;
    node_select text := $q$
        select %1$s as bucket, region, node, fiberstack_latency_bin(latency_ms) as bin,
               count(*) as samples
          from metrics
         where latency_ms is not null %2$s
         group by 1, 2, 3, 4
    $q$;
    relation record;
begin
    if timescale then
        for relation in select * from (values
                ('metrics_latency_hourly', target_select, '1 hour'),
                ('metrics_latency_daily', target_select, '1 day'),
                ('metrics_latency_node_hourly', node_select, '1 hour'),
                ('metrics_latency_node_daily', node_select, '1 day')) as r(name, query, width)
        loop
            execute format('create materialized view %I
                              with (timescaledb.continuous, timescaledb.materialized_only = false) as %s
                              with no data',
                           relation.name,
                           format(relation.query, format('time_bucket(%L, time)', relation.width), ''));
            if relation.width = '1 hour' then
                perform add_continuous_aggregate_policy(relation.name::regclass,
                    start_offset => interval '1 day', end_offset => interval '1 hour',
                    schedule_interval => interval '15 minutes', if_not_exists => true);
                perform add_retention_policy(relation.name::regclass, fiberstack_retention('hourly'),
                    if_not_exists => true);
            else
                perform add_continuous_aggregate_policy(relation.name::regclass,
                    start_offset => interval '3 days', end_offset => interval '1 day',
                    schedule_interval => interval '1 hour', if_not_exists => true);
                perform add_retention_policy(relation.name::regclass, fiberstack_retention('daily'),
                    if_not_exists => true);
            end if;
        end loop;
    else
        create table metrics_latency_hourly (
            bucket timestamptz not null, region text not null, node text not null,
            probe text not null, target text not null, kind text not null,
            bin smallint not null, samples bigint not null
        );
        create index metrics_latency_hourly_bucket on metrics_latency_hourly (bucket);
        create table metrics_latency_daily (like metrics_latency_hourly);
        create index metrics_latency_daily_bucket on metrics_latency_daily (bucket);
        create table metrics_latency_node_hourly (
            bucket timestamptz not null, region text not null, node text not null,
            bin smallint not null, samples bigint not null
        );
        create index metrics_latency_node_hourly_bucket on metrics_latency_node_hourly (bucket);
        create table metrics_latency_node_daily (like metrics_latency_node_hourly);
        create index metrics_latency_node_daily_bucket on metrics_latency_node_daily (bucket);

        -- The summaries' refresh of 0002 keeps its body under another name; the one the
        -- maintenance loop calls refreshes both.
        alter function fiberstack_refresh_rollups(timestamptz, timestamptz)
            rename to fiberstack_refresh_summary_rollups;
        -- Hourly histograms from the raw samples; the daily ones and the nodes' from the
        -- hourly per target (histograms add up), so raw samples are read once.
        execute format($f$
            create function fiberstack_refresh_latency_rollups(from_time timestamptz, to_time timestamptz)
            returns void language sql as $body$
                delete from metrics_latency_hourly
                 where bucket >= date_trunc('hour', from_time) and bucket < to_time;
                insert into metrics_latency_hourly %1$s;
                delete from metrics_latency_node_hourly
                 where bucket >= date_trunc('hour', from_time) and bucket < to_time;
                insert into metrics_latency_node_hourly
                select bucket, region, node, bin, sum(samples) from metrics_latency_hourly
                 where bucket >= date_trunc('hour', from_time) and bucket < to_time
                 group by 1, 2, 3, 4;
                delete from metrics_latency_daily
                 where bucket >= date_trunc('day', from_time) and bucket < to_time;
                insert into metrics_latency_daily
                select date_trunc('day', bucket), region, node, probe, target, kind, bin, sum(samples)
                  from metrics_latency_hourly
                 where bucket >= date_trunc('day', from_time) and bucket < to_time
                 group by 1, 2, 3, 4, 5, 6, 7;
                delete from metrics_latency_node_daily
                 where bucket >= date_trunc('day', from_time) and bucket < to_time;
                insert into metrics_latency_node_daily
                select date_trunc('day', bucket), region, node, bin, sum(samples)
                  from metrics_latency_node_hourly
                 where bucket >= date_trunc('day', from_time) and bucket < to_time
                 group by 1, 2, 3, 4;
            $body$ $f$,
            format(target_select, $$date_trunc('hour', time)$$,
                   $$and time >= date_trunc('hour', from_time) and time < to_time$$));
        create function fiberstack_refresh_rollups(from_time timestamptz, to_time timestamptz)
        returns void language sql as $body$
            select fiberstack_refresh_summary_rollups(from_time, to_time);
            select fiberstack_refresh_latency_rollups(from_time, to_time);
        $body$;

        create or replace function fiberstack_apply_retention(now_time timestamptz default now())
        returns void language sql as $body$
            delete from metrics where time < now_time - fiberstack_retention('raw');
            delete from metrics_hourly where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_daily where bucket < now_time - fiberstack_retention('daily');
            delete from metrics_latency_hourly where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_latency_node_hourly where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_latency_daily where bucket < now_time - fiberstack_retention('daily');
            delete from metrics_latency_node_daily where bucket < now_time - fiberstack_retention('daily');
        $body$;

        -- The histograms of the raw samples already kept.
        perform fiberstack_refresh_latency_rollups(
            coalesce((select min(time) from metrics), now()), 'infinity');
    end if;

    if exists (select 1 from pg_roles where rolname = 'fiberstack_writer') then
        grant select on metrics_latency_hourly, metrics_latency_daily,
                        metrics_latency_node_hourly, metrics_latency_node_daily
           to fiberstack_reader, fiberstack_writer;
        if not timescale then
            grant insert, delete on metrics_latency_hourly, metrics_latency_daily,
                                    metrics_latency_node_hourly, metrics_latency_node_daily
               to fiberstack_writer;
        end if;
    end if;
end
$migration$;

-- Retention settings (0004) now also apply to the histograms: hourly ones keep what
-- metrics_hourly keeps, daily ones what metrics_daily keeps.
create or replace function fiberstack_set_retention(raw interval, hourly interval, daily interval)
returns void language plpgsql as $body$
declare
    period record;
    relation text;
begin
    for period in select * from (values
            ('raw', raw, array['metrics']),
            ('hourly', hourly, array['metrics_hourly', 'metrics_latency_hourly', 'metrics_latency_node_hourly']),
            ('daily', daily, array['metrics_daily', 'metrics_latency_daily', 'metrics_latency_node_daily']))
            as p(name, keep, relations)
    loop
        if period.keep is null or period.keep < interval '1 hour' then
            raise exception 'retention of % samples: % is shorter than 1 hour', period.name, period.keep
                using errcode = '22023';
        end if;
        update fiberstack_meta set value = period.keep::text where key = 'retention_' || period.name;
        if (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb' then
            foreach relation in array period.relations loop
                perform remove_retention_policy(relation::regclass, if_exists => true);
                perform add_retention_policy(relation::regclass, period.keep);
            end loop;
        end if;
    end loop;
end
$body$;

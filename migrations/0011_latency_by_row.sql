-- The region's "Targets by node" at fleet scale (issue 17): each row (node, probe, target)
-- merges its own latency histograms (fiberstack_target_latency_percentiles, called by the
-- panel for each row) instead of every histogram of the region at once (24 h of 400 rows:
-- ~267,000 hourly bins hashed on four text columns). The bench's 24 h of 1,000 targets,
-- median / p95: PostgreSQL 15 from 227 / 236 ms to 80 / 83; TimescaleDB (PGlite) from
-- 461 / 470 to 276 / 318.
--
-- * metrics_latency_6h: the hourly histograms merged by six hours (00, 06, 12 and 18 UTC), so
--   that a row's percentiles over a day read ~300 bins instead of ~670. Kept as long as the
--   hourly ones. TimescaleDB mode: a continuous aggregate on metrics_latency_hourly
--   (hierarchical), refreshed every hour by a policy over the last 3 days up to an hour ago,
--   as the hourly ones (a six-hour bucket is materialized within 2 hours of its end, and again
--   as its hours are); fiber-etl migrate fills it once from the hourly histograms kept (after
--   this migration's transaction, which TimescaleDB's refresh cannot run in). Plain mode: a
--   table that fiberstack_refresh_rollups now refreshes after the hourly histograms, filled
--   here from those kept.
-- * An index by probe and target on the hourly, six-hour and daily histograms that holds
--   everything a row's merge reads, node included, so it is read index-only; 0010's (the same
--   without the node, on the hourly ones) gives way to it. With the node a key column the
--   planner estimated a handful of rows per (probe, target, node) and read TimescaleDB's
--   histograms by bitmap, one page per row (the materialization writes an hour of every
--   target at a time); included, the (probe, target) range is estimated right. On a
--   continuous aggregate (TimescaleDB mode) an index is created on its materialized
--   hypertable, in TimescaleDB's internal schema that every schema's aggregates share: the
--   index is named after that hypertable so that two schemas' migrations (tests run one
--   schema each) do not take each other's name, and 0010's index is found by its table, not
--   its name.

-- The latency (ms) a bin stands for: its middle, what fiberstack_latency_quantile answers.
create or replace function fiberstack_latency_of_bin(bin smallint) returns double precision
language sql immutable parallel safe as $$
    select 0.01 * power(1.02, bin + 0.5)
$$;

do $migration$
declare
    timescale boolean := (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb';
    relation text;
    stored regclass;
    index_name text;
    old_index regclass;
begin
    if timescale then
        create materialized view metrics_latency_6h
            with (timescaledb.continuous, timescaledb.materialized_only = false) as
        select time_bucket('6 hours', bucket) as bucket, region, node, probe, target, kind, bin,
               sum(samples) as samples
          from metrics_latency_hourly
         group by 1, 2, 3, 4, 5, 6, 7
          with no data;
        perform add_continuous_aggregate_policy('metrics_latency_6h',
            start_offset => interval '3 days', end_offset => interval '1 hour',
            schedule_interval => interval '1 hour', if_not_exists => true);
        perform add_retention_policy('metrics_latency_6h', fiberstack_retention('hourly'),
            if_not_exists => true);
    else
        create table metrics_latency_6h (like metrics_latency_hourly);
        create index metrics_latency_6h_bucket on metrics_latency_6h (bucket);

        create function fiberstack_refresh_latency_6h(from_time timestamptz, to_time timestamptz)
        returns void language sql as $body$
            delete from metrics_latency_6h
             where bucket >= date_bin('6 hours', from_time, timestamptz '2000-01-01 00:00:00+00')
               and bucket < to_time;
            insert into metrics_latency_6h
            select date_bin('6 hours', bucket, timestamptz '2000-01-01 00:00:00+00'), region, node,
                   probe, target, kind, bin, sum(samples)
              from metrics_latency_hourly
             where bucket >= date_bin('6 hours', from_time, timestamptz '2000-01-01 00:00:00+00')
               and bucket < to_time
             group by 1, 2, 3, 4, 5, 6, 7;
        $body$;
        create or replace function fiberstack_refresh_rollups(from_time timestamptz, to_time timestamptz)
        returns void language sql as $body$
            select fiberstack_refresh_summary_rollups(from_time, to_time);
            select fiberstack_refresh_latency_rollups(from_time, to_time);
            select fiberstack_refresh_latency_6h(from_time, to_time);
        $body$;
        create or replace function fiberstack_apply_retention(now_time timestamptz default now())
        returns void language sql as $body$
            delete from metrics where time < now_time - fiberstack_retention('raw');
            delete from metrics_hourly where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_daily where bucket < now_time - fiberstack_retention('daily');
            delete from metrics_latency_hourly where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_latency_6h where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_latency_node_hourly where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_latency_daily where bucket < now_time - fiberstack_retention('daily');
            delete from metrics_latency_node_daily where bucket < now_time - fiberstack_retention('daily');
        $body$;
        perform fiberstack_refresh_latency_6h(
            coalesce((select min(bucket) from metrics_latency_hourly), now()), 'infinity');
    end if;
    foreach relation in array array['metrics_latency_hourly', 'metrics_latency_6h', 'metrics_latency_daily'] loop
        if timescale then
            select format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name)::regclass,
                   materialization_hypertable_name || '_probe_target_node'
              into stored, index_name
              from timescaledb_information.continuous_aggregates
             where view_schema = current_schema() and view_name = relation;
            if stored is null then
                raise exception '0011: no continuous aggregate % in schema %', relation, current_schema();
            end if;
        else
            stored := relation::regclass;
            index_name := relation || '_probe_target_node';
        end if;
        -- On the view: TimescaleDB puts it on the materialized hypertable and its chunks.
        execute format('create index if not exists %I on %I (probe, target, bucket) include (region, node, bin, samples)',
                       index_name, relation);
        for old_index in
            select i.indexrelid::regclass
              from pg_index i join pg_class c on c.oid = i.indexrelid
             where i.indrelid = stored and c.relname = 'metrics_latency_hourly_probe_target'
        loop
            execute format('drop index %s', old_index);
        end loop;
    end loop;

    if exists (select 1 from pg_roles where rolname = 'fiberstack_writer') then
        grant select on metrics_latency_6h to fiberstack_reader, fiberstack_writer;
        if not timescale then
            grant insert, delete on metrics_latency_6h to fiberstack_writer;
        end if;
    end if;
end
$migration$;

-- Retention settings: the six-hour histograms keep what the hourly ones keep.
create or replace function fiberstack_set_retention(raw interval, hourly interval, daily interval)
returns void language plpgsql as $body$
declare
    period record;
    relation text;
begin
    for period in select * from (values
            ('raw', raw, array['metrics']),
            ('hourly', hourly, array['metrics_hourly', 'metrics_latency_hourly', 'metrics_latency_6h',
                                     'metrics_latency_node_hourly']),
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

-- One (node, probe, target)'s p50 and p95 latency over a range, and how many latencies they
-- were merged from (`merged`); NULLs when the row has no latency in the range. Whole
-- days inside the range from the daily histograms, six-hour buckets inside it (before its
-- whole days or after them, up to where they are up to date: below) from the six-hour ones,
-- the hourly ones the rest of the range (buckets starting inside it, as the summaries'
-- $__timeFilter takes them); days end before yesterday (TimescaleDB materializes a day a day
-- later, and would compute a later one from the raw samples). Both percentiles in one pass
-- over the merged bins: the first bin whose running count passes the rank, as
-- fiberstack_latency_quantile reads it.
--
-- Days are UTC days, as the daily histograms are (time_bucket in TimescaleDB; in plain mode
-- fiber-etl refreshes them in a UTC session), whatever the caller's time zone: taken with
-- date_trunc in the session's zone, a Grafana whose database sessions run in another zone
-- read whole days off by its offset from UTC.
--
-- A function rather than the same lateral subquery in the panel: the bounds are computed
-- once per row, not for each of its bins (as a constant subquery the planner folded them back
-- into the scan's filter: +60 ms over a region's day), and the panel's plan is not costed as
-- 400 index scans, which made PostgreSQL JIT-compile it (+20 to +440 ms, jit_above_cost).
--
-- The range is cut at points p0 <= p1 <= ... <= p5 (computed once per row): hourly [p0, p1),
-- six-hour [p1, p2), daily [p2, p3), six-hour [p3, p4), hourly [p4, p5] (the summaries'
-- $__timeFilter takes a bucket starting at the range's end). Each piece is its own index
-- range: one range per table with the pieces picked by a filter read the hourly bins of the
-- six-hour pieces too (all 24 hours of them over a day), and as NOT or OR conditions the
-- planner made a bitmap of several ranges and read the table's pages instead of the index
-- alone (2.5 ms a row on TimescaleDB).
-- Where the six-hour buckets end differs by mode: TimescaleDB's are read once materialized,
-- ended 2 hours ago or earlier (a policy run every hour materializes a bucket up to an hour
-- ago; a later one it would compute from the hourly histograms: the same bins, read slower).
-- Plain mode's table is refreshed with the hourly one, so it is read up to the range's end,
-- and a range that ends in the hour under way (Grafana's "now" is a moment before the
-- database's) reads the six-hour bucket under way from it too: it holds what the hourly
-- buckets from its start to the range's end hold (those take the whole hour a range ends in),
-- nothing later having been stored yet.
do $migration$
begin
    execute format($f$
create function fiberstack_target_latency_percentiles(
    target_region text, target_node text, target_probe text, target_name text,
    from_time timestamptz, to_time timestamptz,
    out p50 double precision, out p95 double precision, out merged bigint)
language plpgsql stable parallel safe cost 1000 as $fn$
declare
    origin constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
    -- Whole UTC days: [first_day, days_end), none when days_end <= first_day.
    first_day timestamptz := date_bin('1 day', from_time - interval '1 microsecond', origin) + interval '1 day';
    days_end timestamptz := least(date_bin('1 day', to_time, origin),
                                  date_bin('1 day', now() - interval '25 hours', origin));
    -- Six-hour buckets inside the range and up to date: [first_6h, end_6h).
    first_6h timestamptz := date_bin('6 hours', from_time - interval '1 microsecond', origin) + interval '6 hours';
    end_6h timestamptz := %s;
    p0 timestamptz := from_time;
    p1 timestamptz := first_6h;
    p2 timestamptz := first_day;
    p3 timestamptz := days_end;
    p4 timestamptz := end_6h;
    p5 timestamptz := to_time;
begin
    if days_end <= first_day then
        p2 := end_6h;
        p3 := end_6h;
    end if;
    p1 := least(greatest(p0, p1), p5);
    p2 := least(greatest(p1, p2), p5);
    p3 := least(greatest(p2, p3), p5);
    -- Past p5 when plain mode reads the six-hour bucket under way: then no hourly bucket is
    -- read after it.
    p4 := greatest(p3, p4);
    select fiberstack_latency_of_bin(min(bin) filter (where below > 0.5 * (total - 1))),
           fiberstack_latency_of_bin(min(bin) filter (where below > 0.95 * (total - 1))),
           max(total)::int8
      into p50, p95, merged
      from (select bin, sum(sum(samples)) over (order by bin) as below,
                   sum(sum(samples)) over () as total
              from (select h.bin, h.samples
                      from metrics_latency_hourly h
                     where h.probe = target_probe and h.target = target_name
                       and h.node = target_node and h.region = target_region
                       and h.bucket >= p0 and h.bucket < p1
                    union all
                    select s.bin, s.samples
                      from metrics_latency_6h s
                     where s.probe = target_probe and s.target = target_name
                       and s.node = target_node and s.region = target_region
                       and s.bucket >= p1 and s.bucket < p2
                    union all
                    select d.bin, d.samples
                      from metrics_latency_daily d
                     where d.probe = target_probe and d.target = target_name
                       and d.node = target_node and d.region = target_region
                       and d.bucket >= p2 and d.bucket < p3
                    union all
                    select s.bin, s.samples
                      from metrics_latency_6h s
                     where s.probe = target_probe and s.target = target_name
                       and s.node = target_node and s.region = target_region
                       and s.bucket >= p3 and s.bucket < p4
                    union all
                    select h.bin, h.samples
                      from metrics_latency_hourly h
                     where h.probe = target_probe and h.target = target_name
                       and h.node = target_node and h.region = target_region
                       and h.bucket >= p4 and h.bucket <= p5) u
             group by bin) b;
end
$fn$
    $f$, case when (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb'
              then $e$least(date_bin('6 hours', to_time, origin),
                                date_bin('6 hours', now() - interval '2 hours', origin))$e$
              else $e$date_bin('6 hours', to_time, origin)
                            + case when now() < date_bin('1 hour', to_time, origin) + interval '1 hour'
                                   then interval '6 hours' else interval '0 hours' end$e$
         end);
end
$migration$;

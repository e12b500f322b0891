-- The region's "Targets by node" at fleet scale (issue 17): each row (node, probe, target)
-- merges its own latency histograms, read through an index by probe and target that holds
-- everything the merge reads, node included — instead of merging every histogram of the
-- region at once (24 h of 400 rows: ~267,000 hourly bins hashed on four text columns). The
-- bench's 24 h of 1,000 targets, median / p95: PostgreSQL 15 from 227 / 236 ms to 118 / 136,
-- TimescaleDB from 461 / 470 to 256 / 262. 0010's index (the same without the node) gives way
-- to it; the daily histograms get the same index, for the whole days of longer ranges.
--
-- With the node a key column the planner estimated a handful of rows per (probe, target,
-- node) and read TimescaleDB's histograms by bitmap, one page per row (the materialization
-- writes an hour of every target at a time); included, the (probe, target) range is
-- estimated right and read index-only.
--
-- On a continuous aggregate (TimescaleDB mode) an index is created on its materialized
-- hypertable, in TimescaleDB's internal schema that every schema's aggregates share: the
-- index is named after that hypertable so that two schemas' migrations (tests run one schema
-- each) do not take each other's name, and 0010's index is found by its table, not its name.

-- The latency (ms) a bin stands for: its middle, what fiberstack_latency_quantile answers.
create or replace function fiberstack_latency_of_bin(bin smallint) returns double precision
language sql immutable parallel safe as $$
    select 0.01 * power(1.02, bin + 0.5)
$$;

-- One (node, probe, target)'s p50 and p95 latency over a range, merged from its histograms:
-- whole days inside the range from the daily ones, the hours at its ends (buckets starting
-- inside it, as the summaries' $__timeFilter takes them) from the hourly ones; days end
-- before yesterday (TimescaleDB materializes a day a day later, and would compute a later one
-- from the raw samples). Both percentiles in one pass over the merged bins: the first bin
-- whose running count passes the rank, as fiberstack_latency_quantile reads it. NULLs when
-- the row has no latency in the range.
--
-- A function rather than the same lateral subquery in the panel: the day bounds are computed
-- once per row, not for each of its bins (as a constant subquery the planner folded them back
-- into the scan's filter: +60 ms over a region's day), and the panel's plan is not costed as
-- 400 index scans, which made PostgreSQL JIT-compile it (+20 to +440 ms, jit_above_cost).
create or replace function fiberstack_target_latency_percentiles(
    target_region text, target_node text, target_probe text, target_name text,
    from_time timestamptz, to_time timestamptz,
    out p50 double precision, out p95 double precision)
language plpgsql stable parallel safe cost 1000 as $$
declare
    first_day timestamptz := date_trunc('day', from_time - interval '1 microsecond') + interval '1 day';
    days_end timestamptz := least(date_trunc('day', to_time), date_trunc('day', now() - interval '25 hours'));
begin
    select fiberstack_latency_of_bin(min(bin) filter (where below > 0.5 * (total - 1))),
           fiberstack_latency_of_bin(min(bin) filter (where below > 0.95 * (total - 1)))
      into p50, p95
      from (select bin, sum(sum(samples)) over (order by bin) as below,
                   sum(sum(samples)) over () as total
              from (select h.bin, h.samples
                      from metrics_latency_hourly h
                     where h.probe = target_probe and h.target = target_name
                       and h.node = target_node and h.region = target_region
                       and h.bucket between from_time and to_time
                       and (h.bucket < first_day or h.bucket >= days_end)
                    union all
                    select d.bin, d.samples
                      from metrics_latency_daily d
                     where d.probe = target_probe and d.target = target_name
                       and d.node = target_node and d.region = target_region
                       and d.bucket >= first_day and d.bucket < days_end) u
             group by bin) b;
end
$$;

do $migration$
declare
    timescale boolean := (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb';
    relation text;
    stored regclass;
    index_name text;
    old_index regclass;
begin
    foreach relation in array array['metrics_latency_hourly', 'metrics_latency_daily'] loop
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
end
$migration$;

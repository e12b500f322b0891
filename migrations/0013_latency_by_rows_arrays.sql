-- The region's "Targets by node" (issue 17): fiberstack_rows_latency_percentiles (0012),
-- same answers, less work per call.
--
-- * Planned for each call with its range's cut points as they are (a custom plan). PL/pgSQL
--   caches the plan of the function's query, and after a session's first calls PostgreSQL
--   kept a generic one (for any cut points), which cannot tell at planning time which of the
--   five pieces are empty (over 24 h, usually two) nor which chunks a piece's range excludes:
--   every row started all five pieces' scans, and TimescaleDB's chunk exclusion ran in each.
--   Planning each call costs ~3 ms.
-- * The percentiles picked from arrays: one window (each bin's running count) instead of two
--   (the row's total too), then per row its bins and running counts as arrays and the bin of
--   each rank found by width_bucket (a binary search) instead of two filtered aggregates.
--
-- Measured on the bench's 24 h of 1,000 targets (TimescaleDB, PGlite), one region's 400 rows,
-- a range ending at 03:25 UTC (9 buckets, ~300 bins per row), one session calling it again
-- and again: 0012 138-142 ms for the first two calls, then 167-174 ms (generic plan); custom
-- plans 137-143 ms every call; with the arrays 123-126 ms.

create or replace function fiberstack_rows_latency_percentiles(
    target_region text, nodes text[], probes text[], targets text[],
    from_time timestamptz, to_time timestamptz)
returns table (node text, probe text, target text, p50 double precision, p95 double precision,
               merged bigint)
language plpgsql stable parallel safe cost 1000 rows 400
set plan_cache_mode = force_custom_plan as $fn$
declare
    p record := fiberstack_latency_pieces(from_time, to_time);
begin
    return query
    with r as materialized (
        select u.node, u.probe, u.target, u.id
          from unnest(nodes, probes, targets) with ordinality as u(node, probe, target, id)),
    bins as (
        select r.id, x.bin, sum(x.samples) as samples
          from r cross join lateral (
                select h.bin, h.samples
                  from metrics_latency_hourly h
                 where h.probe = r.probe and h.target = r.target
                   and h.node = r.node and h.region = target_region
                   and h.bucket >= p.p0 and h.bucket < p.p1
                union all
                select s.bin, s.samples
                  from metrics_latency_6h s
                 where s.probe = r.probe and s.target = r.target
                   and s.node = r.node and s.region = target_region
                   and s.bucket >= p.p1 and s.bucket < p.p2
                union all
                select d.bin, d.samples
                  from metrics_latency_daily d
                 where d.probe = r.probe and d.target = r.target
                   and d.node = r.node and d.region = target_region
                   and d.bucket >= p.p2 and d.bucket < p.p3
                union all
                select s.bin, s.samples
                  from metrics_latency_6h s
                 where s.probe = r.probe and s.target = r.target
                   and s.node = r.node and s.region = target_region
                   and s.bucket >= p.p3 and s.bucket < p.p4
                union all
                select h.bin, h.samples
                  from metrics_latency_hourly h
                 where h.probe = r.probe and h.target = r.target
                   and h.node = r.node and h.region = target_region
                   and h.bucket >= p.p4 and h.bucket <= p.p5) x
         group by r.id, x.bin),
    running as (
        select b.id, b.bin, sum(b.samples) over (partition by b.id order by b.bin) as below
          from bins b),
    merged_bins as (
        select c.id, array_agg(c.bin order by c.bin) as bins,
               array_agg(c.below order by c.bin) as belows, max(c.below) as total
          from running c
         group by c.id)
    -- The first bin whose running count passes the rank: width_bucket counts the running
    -- counts at or below the rank (they increase: every merged bin holds a sample).
    select r.node, r.probe, r.target,
           fiberstack_latency_of_bin(m.bins[width_bucket(0.5 * (m.total - 1), m.belows) + 1]),
           fiberstack_latency_of_bin(m.bins[width_bucket(0.95 * (m.total - 1), m.belows) + 1]),
           m.total::int8
      from merged_bins m join r on r.id = m.id;
end
$fn$;


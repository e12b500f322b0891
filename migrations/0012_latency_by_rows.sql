-- The region's "Targets by node" at fleet scale, TimescaleDB mode (issue 17): the panel's rows
-- merge their latency histograms in one query (fiberstack_rows_latency_percentiles, called
-- once with all the panel's rows) instead of one function call per row (0011's
-- fiberstack_target_latency_percentiles, dropped here). Each call ran five index scans on
-- the histograms, and on TimescaleDB each scan of a continuous aggregate starts its own
-- chunk-append executor (runtime chunk exclusion, chunk relations and indexes opened): 2,000
-- of them for a region's 400 rows, ~40 % of the panel's time. In one query the scans are the
-- inner side of a nested loop: started once, rescanned per row. The bins are grouped on the
-- row's number and the bin instead of on four text columns.
--
-- The range is cut as 0011 cuts it (fiberstack_latency_pieces, computed once per call): hourly
-- [p0, p1), six-hour [p1, p2), daily [p2, p3), six-hour [p3, p4), hourly [p4, p5]; each piece
-- its own index range (see 0011 for why, and for where the six-hour buckets end in each mode).

do $migration$
begin
    execute format($f$
create function fiberstack_latency_pieces(from_time timestamptz, to_time timestamptz,
    out p0 timestamptz, out p1 timestamptz, out p2 timestamptz, out p3 timestamptz,
    out p4 timestamptz, out p5 timestamptz)
language plpgsql stable parallel safe as $fn$
declare
    origin constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
    -- Whole UTC days: [first_day, days_end), none when days_end <= first_day.
    first_day timestamptz := date_bin('1 day', from_time - interval '1 microsecond', origin) + interval '1 day';
    days_end timestamptz := least(date_bin('1 day', to_time, origin),
                                  date_bin('1 day', now() - interval '25 hours', origin));
    -- Six-hour buckets inside the range and up to date: [first_6h, end_6h).
    first_6h timestamptz := date_bin('6 hours', from_time - interval '1 microsecond', origin) + interval '6 hours';
    end_6h timestamptz := %s;
begin
    p0 := from_time;
    p1 := first_6h;
    p2 := first_day;
    p3 := days_end;
    p4 := end_6h;
    p5 := to_time;
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

-- Each row (nodes[i], probes[i], targets[i]) of a region: its p50 and p95 latency over a
-- range, and how many latencies they were merged from (`merged`); a row with no latency in
-- the range is not returned. Both percentiles in one pass over the row's merged bins: the
-- first bin whose running count passes the rank, as fiberstack_latency_quantile reads it.
-- A plpgsql function so that the pieces' bounds are computed once and the query is planned
-- with them as parameters (as a constant subquery the planner folded them into each scan's
-- filter; see 0011), and so that the panel's plan is not costed as hundreds of index scans
-- (which made PostgreSQL JIT-compile it).
create function fiberstack_rows_latency_percentiles(
    target_region text, nodes text[], probes text[], targets text[],
    from_time timestamptz, to_time timestamptz)
returns table (node text, probe text, target text, p50 double precision, p95 double precision,
               merged bigint)
language plpgsql stable parallel safe cost 1000 rows 400 as $fn$
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
        select b.id, b.bin,
               sum(b.samples) over (partition by b.id order by b.bin) as below,
               sum(b.samples) over (partition by b.id) as total
          from bins b),
    merged_bins as (
        select c.id,
               fiberstack_latency_of_bin(min(c.bin) filter (where c.below > 0.5 * (c.total - 1))) as p50,
               fiberstack_latency_of_bin(min(c.bin) filter (where c.below > 0.95 * (c.total - 1))) as p95,
               max(c.total)::int8 as merged
          from running c
         group by c.id)
    select r.node, r.probe, r.target, m.p50, m.p95, m.merged
      from merged_bins m join r on r.id = m.id;
end
$fn$;

drop function fiberstack_target_latency_percentiles(text, text, text, text, timestamptz, timestamptz);

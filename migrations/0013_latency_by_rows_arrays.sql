-- The region's "Targets by node" (issue 17): fiberstack_rows_latency_percentiles (0012),
-- same answers, less work per call.
--
-- * Planned for each call with its range's cut points as they are (a custom plan). PL/pgSQL
--   caches the plan of the function's query, and after a session's first calls PostgreSQL
--   kept a generic one (for any cut points), which cannot tell at planning time which of the
--   five pieces are empty (over 24 h, usually two) nor which chunks a piece's range excludes:
--   every row started all five pieces' scans, and TimescaleDB's chunk exclusion ran in each.
--   Planning each call costs ~3 ms.
-- * TimescaleDB mode: each piece reads the materialized hypertable of its continuous aggregate
--   directly up to the aggregate's watermark, and the aggregate (its real-time view) only
--   from there on. Through the view, every histogram row materialized passed a union of the
--   materialized part and the real-time part (empty below the watermark) and their
--   projections: ~12 % of the call. The same rows as the view gives: it takes the
--   materialized hypertable below the same watermark (TimescaleDB's
--   _timescaledb_functions.cagg_watermark, read once per call; older TimescaleDB without that
--   function: the views, as before). The reader role's grant on an aggregate is TimescaleDB's
--   on its materialized hypertable too. The function names the materialized hypertables (and
--   their ids) of this schema's aggregates: a later migration that recreates one of those
--   aggregates must create this function again.
-- * The percentiles picked from arrays: one window (each bin's running count) instead of two
--   (the row's total too), then per row its bins and running counts as arrays and the bin of
--   each rank found by width_bucket (a binary search) instead of two filtered aggregates.
--
-- Measured on the bench's 24 h of 1,000 targets (TimescaleDB, PGlite), one region's 400 rows,
-- a range ending at 03:25 UTC (9 buckets, ~300 bins per row), one session calling it again
-- and again: 0012 138-142 ms for the first two calls, then 167-174 ms (generic plan); custom
-- plans 137-143 ms every call; with the arrays 123-126 ms; reading materialized hypertables
-- 108-113 ms.

do $migration$
declare
    direct boolean := (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb'
                      and to_regprocedure('_timescaledb_functions.cagg_watermark(integer)') is not null;
    piece record;
    stored text;
    watermark text;
    watermarks text := '';
    pieces text[] := '{}';
    -- A piece's histogram rows of the row r: bucket bounds added below.
    reads constant text := 'select h.bin, h.samples from %s h
                 where h.probe = r.probe and h.target = r.target
                   and h.node = r.node and h.region = target_region
                   and h.bucket >= %s and h.bucket %s %s';
begin
    for piece in select * from (values
            ('metrics_latency_hourly', 'p.p0', 'p.p1', '<'),
            ('metrics_latency_6h', 'p.p1', 'p.p2', '<'),
            ('metrics_latency_daily', 'p.p2', 'p.p3', '<'),
            ('metrics_latency_6h', 'p.p3', 'p.p4', '<'),
            -- The summaries' $__timeFilter takes a bucket starting at the range's end.
            ('metrics_latency_hourly', 'p.p4', 'p.p5', '<=')) as v(relation, low, high, below)
    loop
        if direct then
            select format('%I.%I', c.materialization_hypertable_schema, c.materialization_hypertable_name),
                   case when position('w_' || c.view_name in watermarks) = 0 then
                       format(E'\n    w_%s constant timestamptz := coalesce(_timescaledb_functions.to_timestamp('
                              '_timescaledb_functions.cagg_watermark(%s)), ''-infinity'');', c.view_name, h.id)
                   else '' end
              into stored, watermark
              from timescaledb_information.continuous_aggregates c
              join _timescaledb_catalog.hypertable h
                on h.schema_name = c.materialization_hypertable_schema
               and h.table_name = c.materialization_hypertable_name
             where c.view_schema = current_schema() and c.view_name = piece.relation;
            if stored is null then
                raise exception '0013: no continuous aggregate % in schema %', piece.relation, current_schema();
            end if;
            watermarks := watermarks || watermark;
            pieces := pieces || array[
                format(reads, stored, piece.low, piece.below, piece.high) || ' and h.bucket < w_' || piece.relation,
                format(reads, quote_ident(piece.relation), format('greatest(%s, w_%s)', piece.low, piece.relation),
                       piece.below, piece.high)];
        else
            pieces := pieces || format(reads, quote_ident(piece.relation), piece.low, piece.below, piece.high);
        end if;
    end loop;
    execute format($f$
create or replace function fiberstack_rows_latency_percentiles(
    target_region text, nodes text[], probes text[], targets text[],
    from_time timestamptz, to_time timestamptz)
returns table (node text, probe text, target text, p50 double precision, p95 double precision,
               merged bigint)
language plpgsql stable parallel safe cost 1000 rows 400
set plan_cache_mode = force_custom_plan as $fn$
declare
    p record := fiberstack_latency_pieces(from_time, to_time);%s
begin
    return query
    with r as materialized (
        select u.node, u.probe, u.target, u.id
          from unnest(nodes, probes, targets) with ordinality as u(node, probe, target, id)),
    bins as (
        select r.id, x.bin, sum(x.samples) as samples
          from r cross join lateral (
                %s) x
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
$fn$
    $f$, watermarks, array_to_string(pieces, E'\n                union all\n                '));
end
$migration$;

-- What the data path looks like from the ETL, recorded every housekeeping round (10 s by
-- default) by each fiber-etl worker: the region's stream length (entries not yet stored and
-- trimmed), entries delivered but not acknowledged, and the dead-letter stream's length.
-- Grafana's "Data path" dashboard and the operator read it with the same read-only role as
-- the samples, so neither needs access to Redis. Rows older than 7 days are deleted by the
-- workers themselves, in both storage modes.

create table if not exists stream_stats (
    time          timestamptz not null,
    region        text not null,
    consumer      text not null,
    stream_length bigint not null check (stream_length >= 0),
    pending       bigint not null check (pending >= 0),
    dead_letters  bigint not null check (dead_letters >= 0)
);

create index if not exists stream_stats_region_time on stream_stats (region, time desc);

do $grants$
begin
    if exists (select 1 from pg_roles where rolname = 'fiberstack_writer') then
        grant select, insert, delete on stream_stats to fiberstack_writer;
        grant select on stream_stats to fiberstack_reader;
    end if;
end
$grants$;

-- Retention periods become settings (DESIGN.md §4: "configurable"), kept in fiberstack_meta
-- and changed with fiberstack_set_retention(raw, hourly, daily) — `fiber-etl migrate
-- --retain-raw 14d …` calls it. In TimescaleDB mode it replaces the three retention
-- policies; in plain mode fiberstack_apply_retention() reads the settings each round.
-- The defaults are the periods 0002 installed: raw 7 days, hourly 90 days, daily 365 days.

insert into fiberstack_meta (key, value) values
    ('retention_raw', '7 days'),
    ('retention_hourly', '90 days'),
    ('retention_daily', '365 days')
on conflict (key) do nothing;

create or replace function fiberstack_retention(rollup text) returns interval
language sql stable as $$
    select value::interval from fiberstack_meta where key = 'retention_' || rollup
$$;

create or replace function fiberstack_set_retention(raw interval, hourly interval, daily interval)
returns void language plpgsql as $body$
declare
    period record;
begin
    for period in select * from (values ('raw', raw, 'metrics'), ('hourly', hourly, 'metrics_hourly'),
                                        ('daily', daily, 'metrics_daily')) as p(name, keep, relation)
    loop
        if period.keep is null or period.keep < interval '1 hour' then
            raise exception 'retention of % samples: % is shorter than 1 hour', period.name, period.keep
                using errcode = '22023';
        end if;
        update fiberstack_meta set value = period.keep::text where key = 'retention_' || period.name;
        if (select value from fiberstack_meta where key = 'storage_mode') = 'timescaledb' then
            perform remove_retention_policy(period.relation::regclass, if_exists => true);
            perform add_retention_policy(period.relation::regclass, period.keep);
        end if;
    end loop;
end
$body$;

do $plain$
begin
    if (select value from fiberstack_meta where key = 'storage_mode') = 'postgres' then
        create or replace function fiberstack_apply_retention(now_time timestamptz default now())
        returns void language sql as $body$
            delete from metrics where time < now_time - fiberstack_retention('raw');
            delete from metrics_hourly where bucket < now_time - fiberstack_retention('hourly');
            delete from metrics_daily where bucket < now_time - fiberstack_retention('daily');
        $body$;
    end if;
end
$plain$;

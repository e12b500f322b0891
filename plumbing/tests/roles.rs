//! The pools against the PostgreSQL of `make env-up`, with the roles of DESIGN.md §4: a
//! reader role may not create schemas, so only the read-only pools serve it; they find its
//! tables through the schema and refuse every write, whoever connects.

use anyhow::Result;
use fiberstack_e2e::{LocalEnv, unique_name};
use fiberstack_plumbing::postgres::DbConfig;

const SCHEMA: &str = "fs_readers";

fn as_user(url: &str, user: &str, password: &str) -> String {
    let mut parsed = url::Url::parse(url).expect("a URL");
    parsed.set_username(user).expect("a user");
    parsed.set_password(Some(password)).expect("a password");
    parsed.to_string()
}

#[tokio::test]
async fn a_reader_reads_its_schema_and_nobody_writes_through_a_read_only_pool() -> Result<()> {
    let env = LocalEnv::load()?;
    let url = env.fresh_postgres_database("fs_plumbing").await?;
    let role = unique_name("fs_reader").replace('-', "_");
    let admin = DbConfig::new(&url).connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create schema {SCHEMA};
         create table {SCHEMA}.figures (x int);
         insert into {SCHEMA}.figures values (42);
         create role {role} login password 'reader-password';
         grant usage on schema {SCHEMA} to {role};
         grant select on {SCHEMA}.figures to {role};"
    )))
    .execute(&admin)
    .await?;
    let outcome = async {
        let reader = DbConfig {
            schema: Some(SCHEMA.into()),
            ..DbConfig::new(as_user(&url, &role, "reader-password"))
        };
        // The writer's pool creates its schema: not a reader's right, even when it exists.
        let refused = reader
            .connect()
            .await
            .expect_err("a reader creates no schema");
        assert!(
            format!("{refused:#} {:?}", std::error::Error::source(&refused))
                .contains("permission denied"),
            "{refused:#}"
        );
        for pool in [
            reader.connect_read_only().await?,
            reader.connect_lazy_read_only()?,
        ] {
            let x: i32 = sqlx::query_scalar("select x from figures")
                .fetch_one(&pool)
                .await?;
            assert_eq!(x, 42, "found through the schema");
            pool.close().await;
        }
        // Read-only even for a role that may write: the pool, not the role, refuses.
        let owner = DbConfig {
            schema: Some(SCHEMA.into()),
            ..DbConfig::new(&url)
        }
        .connect_read_only()
        .await?;
        let write = sqlx::query("insert into figures values (1)")
            .execute(&owner)
            .await
            .expect_err("read-only")
            .to_string();
        assert!(write.contains("read-only transaction"), "{write}");
        owner.close().await;
        anyhow::Ok(())
    }
    .await;
    admin.close().await;
    env.drop_postgres_database(&url, &[&role]).await?;
    outcome
}

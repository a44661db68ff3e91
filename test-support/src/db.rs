//! A fresh PostgreSQL database per test, made on the server named by `TEST_DATABASE_URL`.

/// The server where test databases are created: `TEST_DATABASE_URL`, else `DATABASE_URL`,
/// else the local default.
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty database with a unique name and returns its URL.
pub async fn fresh_database() -> String {
    let admin_url = admin_database_url();
    let name = format!("sct_{}", uuid::Uuid::new_v4().simple());
    let client = server::db::connect(&admin_url)
        .await
        .expect("test PostgreSQL reachable (set TEST_DATABASE_URL)");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    let mut config: tokio_postgres::Config = admin_url.parse().expect("valid admin URL");
    config.dbname(&name);
    server::db::url_of(&config)
}

/// Drops a database made by [`fresh_database`], with any connections still open to it.
/// Best effort: a test that already passed does not fail over its cleanup.
pub async fn drop_database(url: &str) {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return;
    };
    let Some(name) = config.get_dbname() else {
        return;
    };
    if let Ok(client) = server::db::connect(&admin_database_url()).await {
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// A database of its own, migrated; dropped by [`TestDb::drop_db`].
pub struct TestDb {
    pub url: String,
    pub pool: deadpool_postgres::Pool,
}

impl TestDb {
    pub async fn new() -> Self {
        let url = fresh_database().await;
        server::db::migrate(&url).await.expect("migrations");
        let pool = server::db::pool(&url, 4).expect("pool");
        Self { url, pool }
    }

    pub async fn drop_db(self) {
        self.pool.close();
        drop_database(&self.url).await;
    }
}

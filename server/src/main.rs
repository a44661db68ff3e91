use server::config::{Command, Config};
use server::startup::{Application, shutdown_on_signal};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    // SAFETY: first thing in `main`, before the runtime starts: the only other threads are
    // jemalloc's background purgers, which never read the environment.
    unsafe { server::rag::embed::local::runtime_with_one_thread_per_forward_pass() }?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let cli = Config::from_env_and_args();
    server::telemetry::init_logging(cli.config.log_format);
    let config = cli.config;
    match cli.command.unwrap_or(server::config::Command::Serve) {
        Command::Serve => {
            let open_files = server::startup::raise_open_file_limit();
            tracing::debug!(?open_files, "open-file limit");
            let app = Application::build(config).await?;
            tokio::spawn(shutdown_on_signal(app.state().shutdown.clone()));
            app.run_until_stopped().await
        }
        Command::Migrate => {
            config.validate()?;
            server::db::ensure_database(&config.database_url).await?;
            server::db::migrate(&config.database_url).await
        }
        Command::Eval { questions } => {
            config.validate()?;
            server::rag::index::configure(config.index_settings());
            server::db::ensure_database(&config.database_url).await?;
            server::db::migrate(&config.database_url).await?;
            let db = server::db::pool(&config.database_url, config.db_pool_size)?;
            let summary = server::eval::run_all(&config, db, &questions).await?;
            println!("{summary}");
            Ok(())
        }
        Command::ImportDjango(args) => {
            config.validate()?;
            server::import_django::run(&config, &args).await
        }
    }
}

//! The `sensorhub` binary: `sensorhub [serve]` runs the service; `sensorhub healthcheck` exits 0
//! when the local instance is ready (for a container `HEALTHCHECK`, no curl needed).

use sensorhub::{Application, Config, telemetry};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: sensorhub [serve | healthcheck]\n\nConfiguration comes from SENSORHUB_* environment variables; see the README.";

fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sensorhub: {error}");
            return ExitCode::from(2);
        }
    };
    match command.as_deref() {
        None | Some("serve") => serve(config),
        Some("healthcheck") => healthcheck(config.http_addr),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("sensorhub: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve(config: Config) -> ExitCode {
    telemetry::init_logging(&config.log_filter);
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config).await?;
        app.run_until_stopped().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sensorhub: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Asks `GET /readyz` of the local instance; exit 0 on 200.
fn healthcheck(mut addr: SocketAddr) -> ExitCode {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let answer = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(response)
            if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") =>
        {
            ExitCode::SUCCESS
        }
        Ok(response) => {
            let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
            eprintln!("sensorhub: not ready: {body}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("sensorhub: no answer from {addr}: {error}");
            ExitCode::FAILURE
        }
    }
}

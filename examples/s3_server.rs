//! A local S3 server for benchmarks and manual testing: s3s over s3s-fs, authentication on.
//!
//! ```text
//! cargo run --release --example s3_server -- ROOT_DIR [PORT]
//! ```
//! Buckets are the directories under ROOT_DIR. Credentials: access key `AKIALOGSHIPTEST00001`,
//! secret `logship-test-secret-key-0000000000000000`. Prints `http://127.0.0.1:PORT`, then serves
//! until killed.

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

const ACCESS_KEY: &str = "AKIALOGSHIPTEST00001";
const SECRET_KEY: &str = "logship-test-secret-key-0000000000000000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let root = args.next().ok_or("usage: s3_server ROOT_DIR [PORT]")?;
    let port: u16 = args.next().map(|p| p.parse()).transpose()?.unwrap_or(0);
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| format!("{e:?}"))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("http://{}", listener.local_addr()?);
    loop {
        let (socket, _) = listener.accept().await?;
        let service = service.clone();
        tokio::spawn(async move {
            let _ = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

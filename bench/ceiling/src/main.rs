//! The ceiling for HTTP + JSON on this machine: a bare hyper server (HTTP/1.1 keep-alive,
//! tokio's multi-threaded runtime, as Weir) that reads each request body and answers with a
//! fixed V2 inference response for one iris row. No decoding, no model: whatever Weir spends
//! above this is its own cost.
//!
//! Usage: `weir-ceiling [ADDR]` (default 127.0.0.1:18090).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What Weir answers for one iris row, byte for byte in shape.
const RESPONSE: &str = r#"{"model_name":"iris","model_version":"1","outputs":[{"name":"label","datatype":"BYTES","shape":[1],"data":["setosa"]},{"name":"probabilities","datatype":"FP32","shape":[1,3],"data":[0.9815,0.0185,0.0000]}]}"#;

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    request.into_body().collect().await?;
    let mut response = Response::new(Full::new(Bytes::from_static(RESPONSE.as_bytes())));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let served = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
            if let Err(e) = served {
                eprintln!("connection: {e}");
            }
        });
    }
}

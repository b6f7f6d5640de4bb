//! The HTTP client side: hyper's connection API, no pool, no extra tasks per request; admin API helpers.

use super::*;

pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub fn post(
    path: &str,
    host: &HeaderValue,
    body: Bytes,
    key: Option<String>,
) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, host.clone())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Full::new(body)).unwrap()
}

/// One request on a fresh connection (admin API calls).
pub async fn call(addr: SocketAddr, method: Method, path: &str) -> Result<(StatusCode, Bytes)> {
    send(addr, method, path, Bytes::new()).await
}

/// [`call`] with a body.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<(StatusCode, Bytes)> {
    let mut sender = connect(addr).await?;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

pub async fn admin_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = call(admin, Method::GET, path).await?;
    ensure!(
        status == StatusCode::OK,
        "GET {path}: {status} {}",
        text(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

pub async fn store_depth(admin: SocketAddr, store: &str) -> Result<u64> {
    let stores = admin_json(admin, "/api/v1/stores").await?;
    stores
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == store))
        .and_then(|s| s["depth"].as_u64())
        .ok_or_else(|| anyhow!("no depth for store {store} in {stores}"))
}

/// Ids of the first `limit` messages in store order.
pub async fn peek_ids(admin: SocketAddr, store: &str, limit: usize) -> Result<Vec<String>> {
    let messages = admin_json(
        admin,
        &format!("/api/v1/stores/{store}/messages?limit={limit}"),
    )
    .await?;
    let ids: Vec<String> = messages
        .as_array()
        .context("messages is not an array")?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    ensure!(ids.len() == limit, "peeked {} of {limit} ids", ids.len());
    Ok(ids)
}

mod common;
use common::pg;

#[test]
fn harness_starts_and_stops() {
    let Some(s) = pg::server() else { return };
    let url = s.database();
    println!("{url}");
    let dir = s.port();
    drop(s);
    assert!(std::net::TcpStream::connect(("127.0.0.1", dir)).is_err());
}

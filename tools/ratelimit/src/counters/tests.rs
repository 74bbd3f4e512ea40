//! The same behaviour from both storages: in memory, and in a real `redis-server` (started
//! here on a unix socket in a temporary directory, without persistence).

use super::*;
use limitador::limit::{Context, Expression, Limit};
use limitador::reservation::ReservationId;
use limitador::storage::Authorization;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn counter(max: u64, seconds: u64, value: &str) -> Counter {
    let limit = Limit::with_id(
        format!("limit-{max}-{seconds}"),
        "tests",
        max,
        seconds,
        [],
        [Expression::parse("v").unwrap()],
    );
    let ctx = Context::from(HashMap::from([("v".to_owned(), value.to_owned())]));
    Counter::new(Arc::new(limit), &ctx).unwrap().unwrap()
}

/// A `redis-server` for one test, gone when dropped.
struct RedisProcess {
    child: Child,
    dir: PathBuf,
}

impl RedisProcess {
    fn start(name: &str) -> RedisProcess {
        let dir = std::env::temp_dir().join(format!("wasmgate-rl-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(dir.join("redis.sock"))
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make setup)");
        let socket = dir.join("redis.sock");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        RedisProcess { child, dir }
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.dir.join("redis.sock").display())
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens one more handle on a store's counters (one more replica).
type OpenStore = Box<dyn Fn() -> Store>;

/// Two handles on the same counters: two replicas.
fn stores(name: &str) -> Vec<(OpenStore, Option<RedisProcess>)> {
    let memory = MemoryCounters::default();
    let redis = RedisProcess::start(name);
    let url = redis.url();
    vec![
        (Box::new(move || Store::Memory(memory.clone())), None),
        (
            Box::new(move || {
                Store::Redis(
                    RedisCounters::new(
                        &url,
                        RedisOptions {
                            timeout: Duration::from_secs(2),
                        },
                    )
                    .unwrap(),
                )
            }),
            Some(redis),
        ),
    ]
}

async fn check(store: &Store, counters: &mut Vec<Counter>, delta: u64) -> bool {
    matches!(
        store
            .limiter_storage()
            .check_and_update(counters, delta)
            .await
            .unwrap(),
        Authorization::Ok
    )
}

#[tokio::test]
async fn admits_up_to_the_limit_all_or_nothing() {
    for (replica, _redis) in stores("all-or-nothing") {
        let store = replica();
        let mut both = vec![counter(10, 60, "a"), counter(3, 60, "b")];
        assert!(check(&store, &mut both, 2).await);
        assert_eq!(both[1].remaining(), Some(3), "annotated before the delta");
        // b has 1 left: 2 more do not fit, and a is not counted either.
        assert!(!check(&store, &mut both, 2).await);
        let mut a = vec![counter(10, 60, "a")];
        assert!(check(&store, &mut a, 8).await);
        assert!(!check(&store, &mut a, 1).await);
        assert_eq!(a[0].remaining(), Some(0));
        assert!(a[0].expires_in().unwrap() <= Duration::from_secs(60));
        // A check that counts nothing.
        let mut b = vec![counter(3, 60, "b")];
        assert!(matches!(
            store.limiter_storage().check(&mut b, 1).await.unwrap(),
            Authorization::Ok
        ));
        assert!(matches!(
            store.limiter_storage().check(&mut b, 1).await.unwrap(),
            Authorization::Ok
        ));
        assert_eq!(b[0].remaining(), Some(1));
    }
}

#[tokio::test]
async fn holds_and_checks_see_each_other() {
    for (replica, _redis) in stores("holds") {
        let store = replica();
        let storage = store.limiter_storage();
        let lease = ReservationId::new();
        let mut c = vec![counter(10, 60, "x")];
        let held = storage
            .reserve(&mut c, &lease, 6, 6, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(held, Authorization::Ok));
        assert_eq!(c[0].remaining(), Some(4));
        // Per-request checks count the hold...
        assert!(!check(&store, &mut c, 5).await);
        assert!(check(&store, &mut c, 4).await);
        // ...and holds count per-request hits.
        let refused = storage
            .reserve(&mut c, &ReservationId::new(), 1, 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(matches!(refused, Authorization::Limited(_)));
        // Settling counts what was used and gives the rest back, once.
        let settlement = store.settlement();
        assert_eq!(
            settlement.settle(&c[0], lease.as_str(), 2).await.unwrap(),
            Some(2)
        );
        assert_eq!(
            settlement.settle(&c[0], lease.as_str(), 2).await.unwrap(),
            None
        );
        assert_eq!(
            settlement.settle(&c[0], "never-granted", 5).await.unwrap(),
            None
        );
        assert!(check(&store, &mut c, 4).await);
        assert!(!check(&store, &mut c, 1).await);
    }
}

#[tokio::test]
async fn settling_more_than_held_counts_the_hold() {
    for (replica, _redis) in stores("clamp") {
        let store = replica();
        let lease = ReservationId::new();
        let mut c = vec![counter(10, 60, "y")];
        store
            .limiter_storage()
            .reserve(&mut c, &lease, 3, 3, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            store
                .settlement()
                .settle(&c[0], lease.as_str(), 99)
                .await
                .unwrap(),
            Some(3)
        );
        assert!(check(&store, &mut c, 7).await);
        assert!(!check(&store, &mut c, 1).await);
        // Released without counting (limitador's release_reservation).
        let other = ReservationId::new();
        let mut d = vec![counter(10, 60, "z")];
        store
            .limiter_storage()
            .reserve(&mut d, &other, 4, 4, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(store
            .limiter_storage()
            .release_reservation(&d, &other)
            .await
            .unwrap());
        assert!(!store
            .limiter_storage()
            .release_reservation(&d, &other)
            .await
            .unwrap());
        assert!(check(&store, &mut d, 10).await);
    }
}

#[tokio::test]
async fn replicas_racing_admit_exactly_the_limit() {
    for (replica, _redis) in stores("race") {
        let replicas = [replica(), replica()];
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = replicas[i % 2].clone();
            tasks.push(tokio::spawn(async move {
                let mut c = vec![counter(57, 60, "race")];
                check(&store, &mut c, 1).await
            }));
        }
        let mut admitted = 0;
        for task in tasks {
            admitted += u32::from(task.await.unwrap());
        }
        assert_eq!(admitted, 57, "{}", replicas[0].describe());
    }
}

#[tokio::test]
async fn a_window_ends_and_takes_its_holds_along() {
    for (replica, _redis) in stores("window") {
        let store = replica();
        let lease = ReservationId::new();
        let mut c = vec![counter(2, 1, "w")];
        store
            .limiter_storage()
            .reserve(&mut c, &lease, 1, 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(check(&store, &mut c, 1).await);
        assert!(!check(&store, &mut c, 1).await);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(check(&store, &mut c, 2).await, "{}", store.describe());
        assert_eq!(
            store
                .settlement()
                .settle(&c[0], lease.as_str(), 1)
                .await
                .unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn listing_and_clearing_are_refused() {
    let store = Store::Memory(MemoryCounters::default());
    let error = store.limiter_storage().clear().await.unwrap_err();
    assert!(error.to_string().contains("not supported"), "{error}");
    assert_eq!(StoreFailure::from(error).kind, "other");
}

#[tokio::test]
async fn an_unreachable_redis_is_a_timeout_or_connection_failure() {
    let dir = std::env::temp_dir().join(format!("wasmgate-rl-none-{}", std::process::id()));
    let store = RedisCounters::new(
        &format!("redis+unix://{}/absent.sock", dir.display()),
        RedisOptions {
            timeout: Duration::from_millis(200),
        },
    )
    .unwrap();
    let mut c = vec![counter(1, 60, "u")];
    let Err(error) = store.check_and_update(&mut c, 1).await else {
        panic!("no Redis there, yet it answered");
    };
    let failure = StoreFailure::from(error);
    assert!(
        ["connection", "timeout"].contains(&failure.kind),
        "{failure}"
    );
    assert!(RedisCounters::new(
        "http://nope",
        RedisOptions {
            timeout: Duration::from_secs(1)
        }
    )
    .is_err());
}

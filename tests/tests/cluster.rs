//! The harness's nats-server guards themselves: a three-server cluster
//! routes messages between its servers and runs a JetStream stream with
//! three replicas; a server with accounts authenticates its users; every
//! server is gone once its guard is dropped, also when a test panics.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use cairn_tests::{
    wait_until, within, Account, Client, NatsCluster, NatsServer, NatsServerConfig, WAIT,
};
use futures::StreamExt as _;

#[tokio::test]
async fn a_cluster_routes_messages_and_replicates_a_stream_three_ways() {
    let cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap();
    let first = Client::connect(&cluster.url(0)).await;
    let second = Client::connect(&cluster.url(1)).await;
    let third = Client::connect(&cluster.url(2)).await;

    // Request/reply across a route: the responder on the second server,
    // the requester on the first. Its interest reaches the first server
    // asynchronously: until then the request finds no responders.
    let mut service = second.subscribe("cluster.echo").await.into_inner();
    let responder = second.nats().clone();
    let echo = tokio::spawn(async move {
        while let Some(message) = service.next().await {
            if let Some(reply) = message.reply {
                responder
                    .publish(
                        reply,
                        format!("n2 got {}", String::from_utf8_lossy(&message.payload)).into(),
                    )
                    .await
                    .unwrap();
            }
        }
    });
    let answer = wait_until("the echo service to be reachable from n1", WAIT, || {
        let first = first.nats().clone();
        async move {
            match first.request("cluster.echo", "ping".into()).await {
                Ok(reply) => Ok(reply.payload),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    assert_eq!(&answer[..], b"n2 got ping");
    echo.abort();

    // Publish on the third server, receive on the first.
    let mut inbox = first.subscribe("cluster.news").await;
    wait_until("n1's interest to reach n3", WAIT, || {
        let third = third.nats().clone();
        async move {
            // A request nobody answers: "no responders" says n3 knows of
            // no subscriber yet; a timeout, that it delivered the probe.
            let probe = async_nats::Request::new()
                .payload("probe".into())
                .timeout(Some(Duration::from_millis(200)));
            match third.send_request("cluster.news", probe).await {
                Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                    Err("no responders yet".to_owned())
                }
                _ => Ok(()),
            }
        }
    })
    .await;
    // The probe itself may have arrived first.
    third
        .nats()
        .publish("cluster.news", "hello".into())
        .await
        .unwrap();
    third.flush().await;
    let mut payloads = Vec::new();
    while payloads.last().map(|p: &String| p.as_str()) != Some("hello") {
        payloads.push(String::from_utf8_lossy(&inbox.next().await.payload).into_owned());
    }
    assert_eq!(payloads.last().unwrap(), "hello");

    // A stream with three replicas: created through the first server,
    // written through the second, read through the third.
    let js1 = jetstream::new(first.nats().clone());
    let js2 = jetstream::new(second.nats().clone());
    let js3 = jetstream::new(third.nats().clone());
    let created = within(
        "the stream to be created",
        WAIT,
        js1.create_stream(stream::Config {
            name: "R3".to_owned(),
            subjects: vec!["r3.>".to_owned()],
            num_replicas: 3,
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    assert_eq!(created.cached_info().config.num_replicas, 3);
    // The stream's interest reaches the other servers asynchronously:
    // until then a publish finds no stream ("no responders"; nothing is
    // stored, so trying again cannot store twice).
    let ack = wait_until("a publish through n2 to be stored", WAIT, || {
        let js2 = js2.clone();
        async move {
            match js2.publish("r3.one", "replicated".into()).await {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    assert_eq!((ack.stream.as_str(), ack.sequence), ("R3", 1));
    // So does the stream's assignment: n3 answers once it has it.
    let (stream, info) = wait_until("n3 to see the stream with its 3 replicas", WAIT, || {
        let js3 = js3.clone();
        async move {
            let mut stream = js3.get_stream("R3").await.map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?.clone();
            let peers = info
                .cluster
                .as_ref()
                .map_or(0, |c| c.replicas.len() + usize::from(c.leader.is_some()));
            if peers == 3 {
                Ok((stream, info))
            } else {
                Err(format!("{peers} peers"))
            }
        }
    })
    .await;
    assert_eq!(info.state.messages, 1);
    let placement = info.cluster.clone().expect("a clustered stream");
    let mut servers: Vec<String> = placement
        .replicas
        .iter()
        .map(|r| r.name.clone())
        .chain(placement.leader.clone())
        .collect();
    servers.sort();
    assert_eq!(servers, ["n1", "n2", "n3"]);
    let message = within("the message", WAIT, stream.get_raw_message(1))
        .await
        .unwrap();
    assert_eq!(&message.payload[..], b"replicated");
}

#[tokio::test]
async fn a_killed_cluster_server_restarts_on_its_ports_and_rejoins() {
    let mut cluster = tokio::task::spawn_blocking(NatsCluster::start)
        .await
        .unwrap();
    let url = cluster.url(2);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(2);
        cluster.restart(2);
        cluster
            .wait_ready(Duration::from_secs(30))
            .map(|()| cluster)
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("the cluster did not form again: {e}"));
    assert_eq!(cluster.url(2), url);
    assert_eq!(cluster.server_name(2), "n3");
}

#[tokio::test]
async fn a_server_with_accounts_lets_in_only_its_users() {
    let server = NatsServer::with_config(
        NatsServerConfig::new()
            .account(
                Account::new("A")
                    .jetstream()
                    .user("alice", "alice-secret")
                    .export_service("svc.>"),
            )
            .account(
                Account::new("B")
                    .user("bob", "bob-secret")
                    .import_service("A", "svc.>", true),
            ),
    );
    let alice = Client::connect_as(&server.url(), "alice", "alice-secret").await;
    let bob = Client::connect_as(&server.url(), "bob", "bob-secret").await;
    // Bob's request crosses into alice's account, with his identity.
    let mut requests = alice.subscribe("svc.hello").await.into_inner();
    let responder = alice.nats().clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let user = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Request-Info"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            responder
                .publish(message.reply.unwrap(), user.into())
                .await
                .unwrap();
        }
    });
    // (A first request was seen lost now and then with nats-server 2.9, as
    // if the import were wired asynchronously: ask again, bounded.)
    let reply = wait_until("bob's request to be answered", WAIT, || {
        let bob = bob.clone().with_timeout(Duration::from_secs(1));
        async move {
            let request = async_nats::Request::new()
                .payload("hi".into())
                .timeout(Some(bob.timeout()));
            bob.nats()
                .send_request("svc.hello", request)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(info["acc"], "B");
    assert_eq!(info["user"], "bob");

    // A wrong password: the server says so (spoken over the wire, where
    // the answer is exactly one line).
    let addr = server.addr();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead as _, Write as _};
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        (&stream)
            .write_all(
                b"CONNECT {\"user\":\"alice\",\"pass\":\"wrong\",\"verbose\":false}\r\nPING\r\n",
            )
            .unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert_eq!(answer.trim_end(), "-ERR 'Authorization Violation'");
}

#[test]
fn dropped_servers_are_gone_also_after_a_panic() {
    let (single, cluster) = std::panic::catch_unwind(|| {
        let single = NatsServer::start();
        let cluster = NatsCluster::start();
        let pids = (single.pid(), cluster.pids());
        panic!("{}", serde_json::to_string(&pids).unwrap());
    })
    .unwrap_err()
    .downcast::<String>()
    .map(|s| serde_json::from_str::<(u32, Vec<u32>)>(&s).unwrap())
    .unwrap();
    for pid in std::iter::once(single).chain(cluster) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "nats-server {pid} still runs"
        );
    }
}

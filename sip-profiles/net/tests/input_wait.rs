//! The shell's overload signal: how long a UDP datagram waited in its socket's receive
//! queue before it was read (`NetStats::input_wait`, from kernel receive timestamps).

use std::time::Duration;

use sip_core::transport::Transport;
use sip_net::{Listen, NetConfig, Network};

/// A datagram that sits in the socket while the (single) runtime thread is busy is read
/// later, with at least that wait measured (a lower bound by construction: the kernel
/// stamps it before the sleep, the shell reads it after). Linux turns arrival stamping
/// on a moment after the first socket asks for it (until then a datagram is stamped when
/// read, and its wait reads as zero), so the test tries a few times.
#[test]
fn wait_in_the_receive_queue_is_measured() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = "127.0.0.1:0".parse().unwrap();
        let listen = [Listen {
            transport: Transport::Udp,
            addr,
        }];
        let mut net = Network::bind(&listen, NetConfig::default()).await.unwrap();
        let to = net.bound[0].addr;
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut seen = Vec::new();
        for i in 0..5u8 {
            client.send_to(&[b'0' + i], to).unwrap();
            // The runtime's only thread is blocked: the datagram waits in the kernel.
            std::thread::sleep(Duration::from_millis(300));
            let got = tokio::time::timeout(Duration::from_secs(5), net.inbound.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got.data[..], &[b'0' + i]);
            let waited = net.sender.stats.input_wait();
            if waited >= Duration::from_millis(300) {
                return;
            }
            seen.push(waited);
        }
        panic!("no wait measured: {seen:?}");
    });
}

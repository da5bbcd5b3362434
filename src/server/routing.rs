//! Routing: where a node's `PeerSetup` goes.

use bytes::Bytes;

use crate::codec::Codec;
use crate::error::ProtocolError;
use crate::ids::ConnId;
use crate::protocol::{NodeID, SetupRoute, WSSignalMessageFromNode, WSSignalMessageToNode};

use super::SignalServer;

impl SignalServer {
    /// Forwards a `PeerSetup` to the other node of its pair. The frame goes out as it came in
    /// when both ends speak the same codec: `PeerSetup` encodes the same in both directions.
    pub(super) fn relay(
        &mut self,
        conn: ConnId,
        codec: Codec,
        sender: NodeID,
        frame: Bytes,
        route: SetupRoute,
    ) -> Result<(), ProtocolError> {
        let destination = if sender == route.id_init {
            route.id_follow
        } else if sender == route.id_follow {
            route.id_init
        } else {
            return Err(ProtocolError::NotInPair);
        };
        let len = route.message.encoded_len();
        if len > self.config.max_setup_len {
            return Err(ProtocolError::TooLong {
                field: "peer message",
                len,
                limit: self.config.max_setup_len,
            });
        }
        let Some((to, to_codec)) = self.nodes.get(&destination).map(|node| (node.conn, node.codec)) else {
            // Not the sender's fault: the other node may just have left. No strike.
            self.send_error(conn, &ProtocolError::UnknownDestination(destination));
            return Ok(());
        };
        if self.conns.get(&to).is_some_and(|c| c.busy) {
            // Forwarding would fill a queue that the reader is not emptying fast enough, until its
            // transport closes it as a slow reader: its peers could get it closed. Not the
            // sender's fault either: no strike.
            self.send_error(conn, &ProtocolError::DestinationBusy(destination));
            return Ok(());
        }
        if to_codec == codec {
            self.push_frame(to, frame);
        } else if let Ok(WSSignalMessageFromNode::PeerSetup(info)) = codec.decode(&frame) {
            // Only a relay between codecs decodes the message in full, to re-encode it. `Inbound`
            // accepted the frame, so this decode succeeds too.
            self.send(to, to_codec, &WSSignalMessageToNode::PeerSetup(info));
        }
        self.stats.relays += 1;
        Ok(())
    }
}

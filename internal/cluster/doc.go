// Package cluster lets several bastion gateways share what must be shared
// through etcd (go.etcd.io/etcd/client/v3): revocations and locks, bans,
// one-time login state, membership and the live-session registry.
//
// Each gateway holds one etcd lease (TTL LeaseTTL) that its membership
// record and its live sessions are bound to, so a gateway that dies
// disappears from the cluster when the lease expires. Every second it
// also makes a quorum read; the time of the last one that succeeded is
// what Admit judges staleness by (see Config.Consistency).
//
// Key layout under Config.Prefix (default /bastion/):
//
//	members/<gateway id>           Member JSON, bound to the gateway's lease
//	                               (one lease owns it: a second gateway
//	                               given the same id is refused)
//	sessions/<session id>          live-session registry entry, bound to
//	                               the holding gateway's lease
//	gateways/<gateway id>          Known: every gateway that joined
//	left/<gateway id>              the lease a gateway gave up at its last
//	                               clean stop
//	claims/<kind>/<hex sha-256>    one-time claims (login tokens, codes),
//	                               bound to a lease of the claim's lifetime
//
// Other packages add their own subtrees through Key.
//
// A gateway without a cluster: block never imports etcd state: it keeps
// everything in its bbolt file, as before.
package cluster

package etcdembed

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestThreeMembersSurviveOneLoss: a 3-member cluster on loopback serves a
// write, keeps serving with one member stopped, loses writes without a
// quorum, and converges when members return.
func TestThreeMembersSurviveOneLoss(t *testing.T) {
	ctx := context.Background()
	c, err := Start(ctx, t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	put := func(k, v string, d time.Duration) error {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		_, err := cli.Put(ctx, k, v)
		return err
	}
	if err := put("a", "1", 5*time.Second); err != nil {
		t.Fatalf("put on a healthy cluster: %v", err)
	}
	if err := c.Stop(0); err != nil {
		t.Fatal(err)
	}
	if err := put("b", "2", 10*time.Second); err != nil {
		t.Fatalf("put with one of three members down: %v", err)
	}
	if err := c.Stop(1); err != nil {
		t.Fatal(err)
	}
	if err := put("c", "3", time.Second); err == nil {
		t.Fatal("a put succeeded with two of three members down (no quorum)")
	}
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := put("d", "4", 10*time.Second); err != nil {
		t.Fatalf("put after quorum came back: %v", err)
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := cli.Get(gctx, "b")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "2" {
		t.Fatalf("value written with one member down was not kept: %v %v", resp, err)
	}
}

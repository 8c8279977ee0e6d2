package devidp_test

import (
	"context"
	"fmt"
	"time"

	"github.com/bastion-ssh/bastion/internal/devidp"
	"github.com/bastion-ssh/bastion/internal/oidc"
)

// A test starts a provider on a free loopback port, points the relying
// party at it, and approves the device login the way a user would.
func ExampleStart() {
	ctx := context.Background()
	idp, err := devidp.Start(ctx, devidp.Config{Users: devidp.DemoUsers(), PollInterval: time.Second})
	if err != nil {
		panic(err)
	}
	defer idp.Close()

	p, err := oidc.New(ctx, oidc.Config{Issuer: idp.Issuer(), ClientID: idp.ClientID()})
	if err != nil {
		panic(err)
	}
	da, err := p.StartDevice(ctx)
	if err != nil {
		panic(err)
	}
	if err := idp.ApproveDevice(da.UserCode, "alice"); err != nil {
		panic(err)
	}
	id, err := p.WaitDevice(ctx, da)
	if err != nil {
		panic(err)
	}
	fmt.Println(id.Username, id.Groups)
	// Output: alice [eng]
}

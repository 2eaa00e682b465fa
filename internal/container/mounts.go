package container

import "github.com/containerd/containerd/api/types"

// MountsFromAPI converts containerd's mount messages.
func MountsFromAPI(in []*types.Mount) []Mount {
	out := make([]Mount, 0, len(in))
	for _, m := range in {
		out = append(out, Mount{Type: m.GetType(), Source: m.GetSource(), Options: m.GetOptions()})
	}
	return out
}

func mountsToAPI(in []Mount) []*types.Mount {
	out := make([]*types.Mount, 0, len(in))
	for _, m := range in {
		out = append(out, &types.Mount{Type: m.Type, Source: m.Source, Options: m.Options})
	}
	return out
}

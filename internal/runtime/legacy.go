package runtime

import (
	"fmt"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protowire"
)

// Type URLs of the runtime options containerd's 1.x client sends for
// runtimes not named io.containerd.runc.* (runtime/linux/runctypes in the
// containerd 1.x module; the api module does not have them).
const (
	LegacyCreateOptionsTypeURL = "containerd.linux.runc.CreateOptions"
	LegacyRuncOptionsTypeURL   = "containerd.linux.runc.RuncOptions"
)

// decodeLegacyCreateOptions decodes containerd.linux.runc.CreateOptions:
//
//	bool no_pivot_root = 1; bool open_tcp = 2; bool external_unix_sockets = 3;
//	bool terminal = 4; bool file_locks = 5; repeated string empty_namespaces = 6;
//	string cgroups_mode = 7; bool no_new_keyring = 8; string shim_cgroup = 9;
//	uint32 io_uid = 10; uint32 io_gid = 11; string criu_work_path = 12;
//	string criu_image_path = 13;
func decodeLegacyCreateOptions(b []byte) (Options, error) {
	var o Options
	err := decodeFields(b, func(num protowire.Number, v wireValue) error {
		switch num {
		case 1:
			o.NoPivotRoot = v.bool()
		case 8:
			o.NoNewKeyring = v.bool()
		case 9:
			o.ShimCgroup = v.str
		case 10:
			o.IoUID = uint32(v.num)
		case 11:
			o.IoGID = uint32(v.num)
		case 12:
			o.CriuWorkPath = v.str
		case 13:
			o.CriuImagePath = v.str
		}
		return nil
	})
	return o, err
}

// decodeLegacyRuncOptions decodes containerd.linux.runc.RuncOptions:
//
//	string runtime = 1; string runtime_root = 2; string criu_path = 3;
//	bool systemd_cgroup = 4;
func decodeLegacyRuncOptions(b []byte) (Options, error) {
	var o Options
	err := decodeFields(b, func(num protowire.Number, v wireValue) error {
		switch num {
		case 1:
			o.BinaryName = v.str
		case 2:
			o.Root = v.str
		case 4:
			o.SystemdCgroup = v.bool()
		}
		return nil
	})
	return o, err
}

// wireValue is one decoded field: varints in num, length-delimited bytes
// in str.
type wireValue struct {
	num uint64
	str string
}

func (v wireValue) bool() bool { return v.num != 0 }

// decodeFields walks a protobuf message, handing varint and
// length-delimited fields to f and skipping others. Malformed input is
// errdefs.ErrInvalidArgument.
func decodeFields(b []byte, f func(protowire.Number, wireValue) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("malformed options: %v: %w", protowire.ParseError(n), errdefs.ErrInvalidArgument)
		}
		b = b[n:]
		var v wireValue
		switch typ {
		case protowire.VarintType:
			v.num, n = protowire.ConsumeVarint(b)
		case protowire.BytesType:
			var raw []byte
			raw, n = protowire.ConsumeBytes(b)
			v.str = string(raw)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("malformed options field %d: %v: %w", num, protowire.ParseError(n), errdefs.ErrInvalidArgument)
		}
		b = b[n:]
		if typ == protowire.VarintType || typ == protowire.BytesType {
			if err := f(num, v); err != nil {
				return err
			}
		}
	}
	return nil
}

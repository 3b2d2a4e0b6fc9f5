package wiretest

import "testing"

func TestInvalidText(t *testing.T) {
	type fs struct{ MountPoint string }
	type disk struct {
		Name        string
		Filesystems []fs
		Tags        map[string]string
		Ptr         *int64
		hidden      string
	}
	good := []disk{{Name: "vda", Filesystems: []fs{{"/"}}, Tags: map[string]string{"a": "✓"}, hidden: "\xff"}}
	if bad := InvalidText(good); bad != "" {
		t.Errorf("valid text reported: %s", bad)
	}
	for _, tc := range []struct {
		v    any
		want string
	}{
		{[]disk{{Filesystems: []fs{{"/"}, {"/mnt/\xff"}}}}, `[0].Filesystems[1].MountPoint = "/mnt/\xff"`},
		{&disk{Tags: map[string]string{"k\xfe": ""}}, `.Tags key = "k\xfe"`},
		{map[string]disk{"x": {Name: "\xc0"}}, `[x].Name = "\xc0"`},
	} {
		if got := InvalidText(tc.v); got != tc.want {
			t.Errorf("InvalidText(%+v) = %s, want %s", tc.v, got, tc.want)
		}
	}
}

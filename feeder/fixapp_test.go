package feeder

import "testing"

func TestIsLogout(t *testing.T) {
	for raw, want := range map[string]bool{
		"8=FIX.4.4\x019=60\x0135=5\x0134=9\x0149=FIXSIM\x0152=20261130-12:00:00\x0156=KAWASE\x0158=bye\x0110=123\x01":  true,
		"8=FIX.4.4\x019=60\x0135=W\x0134=9\x0149=FIXSIM\x0152=20261130-12:00:00\x0156=KAWASE\x0158=35=5\x0110=123\x01": false,
		"8=FIX.4.4\x019=60\x0135=50\x0134=9\x0110=123\x01":                                                             false,
		"garbage": false,
	} {
		if got := isLogout([]byte(raw)); got != want {
			t.Errorf("isLogout(%q) = %v", raw, got)
		}
	}
}

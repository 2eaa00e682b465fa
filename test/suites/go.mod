module github.com/tether-shim/tether/test/suites

go 1.26.0

require github.com/tether-shim/tether/testkit v0.0.0

replace github.com/tether-shim/tether/testkit => ../../testkit

from drivers.onvif.simulator.standalone import main

main()

# cow.gp: the plot of bench/cow.sh.
#
# Four panels: (1) IOPS of 4 KiB first writes right after a snapshot and of
# rewrites, per target and QD; (2) snapvol's first-write and rewrite IOPS
# against the number of snapshots; (3) taking/dropping a snapshot under a
# QD16 write load: call time and the longest write in flight, next to the
# control windows (log scale: qemu's drains are 100x snapvol's calls);
# (4) the snapvol server's resident size through the memory test, with the
# 64 MiB goal.  Medians of the repetitions; the .md has the spreads.
# Called as: gnuplot -e "dir='DATADIR'; out='FILE.png'; ttl='TITLE'" cow.gp
# where DATADIR holds first.dat, snapn.dat, create.dat, mem.dat and vars.gp
# from `cow-report.py dat`.
load dir.'/vars.gp'
set terminal pngcairo size 1600,1200 font ",10"
set output out
set multiplot layout 2,2 title ttl font ",13"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set datafile separator "\t"
set datafile missing "NaN"
set key top right

set title "4 KiB random writes right after a snapshot (first) and again (rewrite)"
set ylabel "IOPS"
set yrange [0:*]
set xtics rotate by -20 nomirror
if (have_first) {
	plot for [i=2:n_first+1] dir.'/first.dat' using i:xtic(1) title columnheader(i) \
	     lc rgb word(c_first, i-1)
} else {
	set label 1 "not run" at graph 0.5, graph 0.5 center
	unset tics
	plot [0:1] [0:1] 2 notitle
	unset label 1
	set tics
}

set title "snapvol: 4 KiB writes at QD16 with N snapshots of the volume"
set xlabel "snapshots"
set xtics norotate
if (have_snapn) {
	plot dir.'/snapn.dat' using 2:xtic(1) title columnheader(2) lc rgb "#e76f51", \
	     '' using 3 title columnheader(3) lc rgb "#f4a261"
} else {
	set label 1 "not run" at graph 0.5, graph 0.5 center
	unset logscale y
	unset tics
	plot [0:1] [0:1] 2 notitle
	unset label 1
	set tics
}
unset xlabel

set title "taking (take) / dropping (drop) a snapshot under 4 KiB QD16 writes (log scale)"
set ylabel "milliseconds"
set logscale y
set yrange [0.1:*]
set xtics rotate by -20 nomirror
if (have_create) {
	plot for [i=2:5] dir.'/create.dat' using i:xtic(1) title columnheader(i) \
	     lc rgb word("#264653 #2a9d8f #e76f51 #bbbbbb", i-1), \
	     1 with lines dt 2 lc rgb "red" title "1 ms"
} else {
	set label 1 "not run" at graph 0.5, graph 0.5 center
	unset logscale y
	unset tics
	plot [0:1] [0:1] 2 notitle
	unset label 1
	set tics
}
unset logscale y

set title "snapvol server memory: 1 TiB sparse volume, snapshots + random 4 KiB writes"
set ylabel "MiB"
set yrange [0:*]
set style data linespoints
set xtics rotate by -30 nomirror font ",8"
if (have_mem) {
	plot dir.'/mem.dat' using 2:xtic(1) title columnheader(2) lw 2 lc rgb "#e76f51", \
	     '' using 3 title columnheader(3) lw 2 dt 2 lc rgb "#264653", \
	     64 with lines dt 3 lc rgb "red" title "goal 64 MiB"
} else {
	set label 1 "not run" at graph 0.5, graph 0.5 center
	unset logscale y
	unset tics
	plot [0:1] [0:1] 2 notitle
	unset label 1
	set tics
}
unset multiplot
